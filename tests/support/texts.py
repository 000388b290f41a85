"""Whole expected texts of messages built from several catalog entries, rendered the way the
bot renders them, for tests that assert a message whole."""
from __future__ import annotations

from conversations.core import PURPOSE_KEYS, PURPOSE_WHY
from conversations.i18n import translator
from storage.models import CONSENT_PURPOSES


def notice_summary(app, lang: str) -> str:
    """The privacy notice's summary shown at onboarding (conversations/core.py onboarding.notice)."""
    t, m = translator(lang), app.catalog.municipality
    purposes = "\n".join(f"• {t(PURPOSE_KEYS[p])}" for p in CONSENT_PURPOSES)
    return t("notice.summary", municipality=m.name.get(lang), purposes=purposes, url=m.privacy_notice_url,
             version=app.engine.config.notice_version)


def onboarding_thanks(lang: str, granted=CONSENT_PURPOSES) -> str:
    """The thanks at the end of the consents, naming the purposes granted."""
    t = translator(lang)
    return t("onboarding.thanks", purposes=t.join(t(PURPOSE_KEYS[p]) for p in granted))


def consent_needed(app, lang: str, purpose: str) -> str:
    """The question asked before a feature that needs a purpose not yet granted (consent.ask)."""
    t = translator(lang)
    return t("consent.needed", purpose=t(PURPOSE_KEYS[purpose]), why=t(PURPOSE_WHY[purpose]),
             url=app.catalog.municipality.privacy_notice_url)


def help_text(app, lang: str) -> str:
    """/yardim's answer: the intro, one line a command of the language's menu, the footer."""
    t, registry = translator(lang), app.registry
    names = registry.command_menu.get(lang, registry.command_menu["en"])
    commands = [f"/{name} — {t(registry.description(name))}" for name in names if registry.description(name)]
    return "\n".join([t("help.intro", municipality=app.catalog.municipality.name.get(lang)), *commands,
                      t("help.footer")])
