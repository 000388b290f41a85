"""Issue 14, residents: mahalles as Turks write them, categories by the words people use, and
descriptions (emoji-only, over-long), through Engine.handle on the console channel and the CLI."""
from __future__ import annotations

import pytest

from conversations.i18n import translator
from storage import reports as rp
from storage.db import transaction
from storage.models import Resident, Staff
from tests.test_reports import CODE, PIN, Chat, _katilim

tr, en, ar = translator("tr"), translator("en"), translator("ar")


def _mahalle_of(app, chat: Chat) -> str | None:
    with transaction(app.db) as db:
        return db.get(Resident, chat.resident_id()).mahalle


# ---------------------------------------------------------------- 6. mahalle as Turks write it
@pytest.mark.parametrize("typed, key", [("Yıldız Mahallesi", "yildiz"), ("yildiz mah.", "yildiz"),
                                        ("kozağaç mh", "kozagac"), ("Buca Koop Mahallesi", "buca_koop"),
                                        ("KOZAĞAÇ MH.", "kozagac"), ("Mah. Yıldız", "yildiz")])
def test_onboarding_takes_the_mahalle_as_typed(make_app, typed, key):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard("tr", typed)
    assert _mahalle_of(app, chat) == key


def test_mahalle_words_in_reports_staff_filters_and_the_cli(make_app, sqlite_url):
    app = make_app(database_url=sqlite_url)
    ayse = Chat(app, "ayse")
    ayse.onboard("tr")
    ayse.text("/bildir")
    ayse.text("çukur")
    ayse.text("Buca Koop Mahallesi")
    assert ayse.state() == "report.street"
    assert ayse.said == tr("report.street_prompt", mahalle="Buca Koop")
    with transaction(app.db) as db:
        db.add(Staff(console="boss"))
        code = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                mahalle="kozagac").code
        other = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                 mahalle="yildiz").code
    boss = Chat(app, "boss")
    boss.onboard("tr")
    boss.text("/raporlar")
    boss.tap("mah")
    boss.text("kozağaç mh")
    assert boss.state() == "staffreport.home"
    boss.tap("st:new")
    assert f"r:{code}" in boss.keys() and f"r:{other}" not in boss.keys()
    listed = _katilim(sqlite_url, "list", "--mahalle", "Yıldız Mahallesi").stdout
    assert other in listed and code not in listed


def test_not_found_is_never_followed_by_we_found_several(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.text("/start")
    chat.tap("lang:tr")
    chat.tap("all")
    chat.text("ça")                                 # Çağdaş, Çaldıran, Çamlıkule...: which one?
    assert chat.last[-1].text == tr("mahalle.did_you_mean")
    chat.text("Zzyzx Mahallesi")
    assert [o.text for o in chat.last] == [tr("mahalle.not_found"), tr("mahalle.prompt")]
    assert "m:yildiz" in chat.keys() or "page:next" in chat.keys()


# ---------------------------------------------------------------- 8. categories by the words people use
def _category_typed(chat: Chat, typed: str) -> str | None:
    from storage.models import ConversationSession

    chat.text("/bildir")
    chat.text(typed)
    with transaction(chat.app.db) as db:
        session = db.get(ConversationSession, chat.resident_id())
        state, category = session.state, session.data.get("category")
    chat.text("/iptal")
    return category if state == "report.location" else None


def test_every_synonym_in_every_language_finds_its_category(make_app):
    from bot.catalog import load_catalog

    app = make_app()
    catalog = app.catalog
    chats = {lang: Chat(app, f"r-{lang}") for lang in ("tr", "en", "ar")}
    for lang, chat in chats.items():
        chat.onboard(lang)
    needed = {"çukur", "asfalt", "lamba", "ışık", "köpek", "kedi", "çöp"}
    assert needed <= {w for c in catalog.categories for w in c.synonyms.get("tr", ())}
    wrong = []
    for category in catalog.categories:
        for words_lang, words in category.synonyms.items():
            for word in words:
                for lang in ("tr", "en", "ar"):  # a synonym works whatever the resident's language
                    if lang != words_lang and lang != "tr":
                        continue
                    found = _category_typed(chats[lang], word)
                    if found != category.key:
                        wrong.append((word, lang, found, category.key))
    assert wrong == []
    assert load_catalog(catalog.path).categories == catalog.categories


@pytest.mark.parametrize("lang", ["tr", "en", "ar"])
def test_the_examples_in_yardim_all_work(make_app, lang):
    """/yardim says "/bildir — Sorun bildir (çukur, lamba, çöp...)": each example finds a category."""
    import re

    app = make_app()
    chat = Chat(app, "r")
    chat.onboard(lang)
    chat.text("/yardim" if lang == "tr" else "/help")
    t = translator(lang)
    assert t("report.command") in chat.said
    examples = re.search(r"\((.+?)\)", t("report.command")).group(1)
    words = [w.strip(" .…") for w in re.split(r"[,،]", examples) if w.strip(" .…")]
    assert len(words) == 3
    expected = {"tr": ["road", "lighting", "waste"], "en": ["road", "lighting", "waste"],
                "ar": ["road", "lighting", "waste"]}[lang]
    assert [_category_typed(chat, w) for w in words] == expected


# ---------------------------------------------------------------- 11. descriptions
def _to_describe(chat: Chat) -> None:
    chat.text("/bildir")
    chat.text("lamba")
    chat.text("Yıldız")
    chat.text("Okulun önü")
    assert chat.state() == "report.describe"


@pytest.mark.parametrize("text", ["👍👍👍", "🕳️🕳️", "!!! ???", "ok 😡😡😡"])
def test_emoji_only_description_is_too_short(make_app, text):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard("tr")
    _to_describe(chat)
    chat.text(text)
    assert chat.state() == "report.describe"
    assert [o.text for o in chat.last] == [tr("report.describe_short"),
                                           tr("report.describe_prompt", category="Sokak aydınlatması")]


def test_an_over_long_description_is_trimmed_never_refused(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard("tr")
    _to_describe(chat)
    long = "Lamba yanmıyor. " * 400                    # 6,400 characters: over the engine's 2,000 too
    assert len(long) > app.settings.max_text_length
    chat.text(long)
    assert chat.state() == "report.photos"
    assert chat.last[0].text == tr("report.describe_trimmed", limit=1000)
    chat.tap("done")
    chat.tap("confirm")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, CODE.search(chat.said).group(0))
        assert len(report.description) == 1000 and report.description.startswith("Lamba yanmıyor. Lamba")
    chat.text("x" * 5000)                             # elsewhere the engine's limit still stands
    assert chat.last[0].text == tr("engine.too_long", limit=app.settings.max_text_length)
