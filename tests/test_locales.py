"""The message catalogs: every key in the code is translated in tr, en and ar, plural forms match each
language, compiled catalogs match their sources and ship inside the package, placeholders match."""
from __future__ import annotations

import fnmatch
import io
import re
import string
import tomllib
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

import locales
from bot import i18n_tools
from conversations.i18n import LANGUAGES, format_when, translator

ROOT = Path(i18n_tools.ROOT)
PO_FILES = sorted(i18n_tools.LOCALES_DIR.glob("*/LC_MESSAGES/*.po"))


@pytest.fixture(scope="module")
def keys() -> dict[str, bool]:
    found = i18n_tools.extract()
    assert len(found) > 50, "the extraction found almost no keys"
    return found


@lru_cache(maxsize=None)
def catalog(lang: str, domain: str):
    path = i18n_tools.po_path(lang, domain)
    with path.open("rb") as fh:
        return read_po(fh, locale=lang, domain=domain)


def strings_of(message) -> tuple[str, ...]:
    return message.string if isinstance(message.string, tuple) else (message.string,)


def placeholders(text: str) -> set[str]:
    names = set()
    for _, name, _, _ in string.Formatter().parse(text):
        if name is not None:
            names.add(name.split(".")[0].split("[")[0])
    return names


def test_the_core_keys_are_extracted(keys):
    for key in ("menu.title", "engine.error", "engine.wrong_kind", "kind.sticker", "words.cancel",
                "consent.purpose.reports", "notice.summary", "data.deleted"):
        assert key in keys


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_key_has_a_translation(keys, lang):
    missing = []
    for key, plural in sorted(keys.items()):
        domain = i18n_tools.domain_of(key)
        if lang not in i18n_tools.languages_of(domain):  # the staff console: Turkish and English only
            continue
        if not i18n_tools.po_path(lang, domain).exists():
            missing.append(f"{key}: no {domain}.po")
            continue
        message = catalog(lang, domain).get(key)
        if message is None or not all(s.strip() for s in strings_of(message)):
            missing.append(key)
        elif plural:
            wanted = 6 if lang == "ar" else 2
            if not isinstance(message.id, tuple) or len(strings_of(message)) != wanted:
                missing.append(f"{key}: needs {wanted} plural forms, has {len(strings_of(message))}")
        # the running translator finds it (the compiled .mo is loaded)
        elif not translator(lang).has(key):
            missing.append(f"{key}: not in the compiled catalog")
    assert not missing, f"{lang}: " + ", ".join(missing)


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_plural_forms_header(po):
    lang = po.parent.parent.name
    header = po.read_text(encoding="utf-8")
    expected = "nplurals=6;" if lang == "ar" else "nplurals=2;"
    assert expected in header.replace(" ", ""), f"{po}: the Plural-Forms header must say {expected}"


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_plural_entries_have_the_right_number_of_forms(po):
    lang = po.parent.parent.name
    wanted = 6 if lang == "ar" else 2
    for message in catalog(lang, po.stem):
        if message.id and isinstance(message.id, tuple):
            assert len(strings_of(message)) == wanted, f"{po.name}: {message.id[0]}"
            assert all(s.strip() for s in strings_of(message)), f"{po.name}: {message.id[0]} has an empty form"


def test_arabic_plural_rule_uses_six_forms():
    t = translator("ar")
    assert {t._plural(n) for n in (0, 1, 2, 3, 11, 100)} == {0, 1, 2, 3, 4, 5}
    assert [translator(lang)._plural(n) for lang in ("tr", "en") for n in (1, 2)] == [0, 1, 0, 1]


def test_compiled_catalogs_match_their_sources_and_nothing_is_missing():
    assert i18n_tools.check() == []


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "tr"])
def test_placeholders_match_the_turkish_text(lang):
    """A translation may use only the {placeholders} of the Turkish text (no translator typos)."""
    problems = []
    for po in sorted((i18n_tools.LOCALES_DIR / "tr" / "LC_MESSAGES").glob("*.po")):
        turkish = {m.id if isinstance(m.id, str) else m.id[0]: m for m in catalog("tr", po.stem) if m.id}
        other_path = i18n_tools.po_path(lang, po.stem)
        if lang not in i18n_tools.languages_of(po.stem):  # the staff console: Turkish and English only
            continue
        if not other_path.exists():
            problems.append(f"{other_path.name} missing")
            continue
        for message in catalog(lang, po.stem):
            if not message.id:
                continue
            key = message.id if isinstance(message.id, str) else message.id[0]
            source = turkish.get(key)
            if source is None:
                continue
            allowed = set().union(*(placeholders(s) for s in strings_of(source))) | {"n"}
            for text in strings_of(message):
                extra = placeholders(text) - allowed
                if extra:
                    problems.append(f"{po.stem}: {key}: {sorted(extra)} not in the Turkish text")
    assert not problems, "\n".join(problems)


def test_every_translation_has_well_formed_braces():
    """An unbalanced brace would make str.format fail when the message is sent."""
    for lang in LANGUAGES:
        for po in sorted((i18n_tools.LOCALES_DIR / lang / "LC_MESSAGES").glob("*.po")):
            for message in catalog(lang, po.stem):
                for text in strings_of(message):
                    placeholders(text)  # raises ValueError on an unbalanced brace


def test_format_when_in_turkish():
    when = datetime(2026, 11, 24, 15, 0, tzinfo=timezone.utc)
    assert format_when(when, "tr") == "24 Kasım 2026 Salı 18:00"
    assert format_when(when, "en") == "Tuesday 24 November 2026, 18:00"
    assert format_when(when, "ar") == "الثلاثاء 24 نوفمبر 2026، 18:00"
    # a naive datetime is taken as UTC
    assert format_when(datetime(2026, 11, 24, 15, 0), "tr") == "24 Kasım 2026 Salı 18:00"


def test_format_when_writes_each_language_its_own_way():
    """Turkish: day month year weekday; English: weekday first, a comma before the time; Arabic the
    same with the Arabic comma. In Istanbul time (UTC+3), so 22:59 UTC is the next day."""
    friday = datetime(2026, 12, 4, 15, 30, tzinfo=timezone.utc)
    late = datetime(2026, 12, 1, 22, 59, tzinfo=timezone.utc)
    assert [format_when(friday, lang) for lang in LANGUAGES] == [
        "4 Aralık 2026 Cuma 18:30", "Friday 4 December 2026, 18:30", "الجمعة 4 ديسمبر 2026، 18:30"]
    assert [format_when(late, lang) for lang in LANGUAGES] == [
        "2 Aralık 2026 Çarşamba 01:59", "Wednesday 2 December 2026, 01:59", "الأربعاء 2 ديسمبر 2026، 01:59"]


def _texts(lang: str):
    """Every text shown to someone in this language: (key, text), each plural form apart. The
    words.* entries are lists of typed words the engine splits on commas, not prose."""
    for po in sorted((i18n_tools.LOCALES_DIR / lang / "LC_MESSAGES").glob("*.po")):
        for message in catalog(lang, po.stem):
            if not message.id:
                continue
            key = message.id if isinstance(message.id, str) else message.id[0]
            if not key.startswith("words."):
                for text in strings_of(message):
                    yield key, text


def test_arabic_texts_use_arabic_punctuation():
    latin_comma = re.compile(r"[\u0600-\u06ff}]\s*,\s*[\u0600-\u06ff{]")
    latin_question = re.compile(r"[\u0600-\u06ff]\s*\?")
    found = [f"{key}: {text!r}" for key, text in _texts("ar") if latin_comma.search(text) or latin_question.search(text)]
    assert not found, "\n".join(found)
    # a command inside Arabic text reads left to right (U+200E before the slash)
    commands = re.compile(r"(?<![\u200eA-Za-z0-9_./:])/[a-z]")
    found = [f"{key}: {text!r}" for key, text in _texts("ar") if commands.search(text)]
    assert not found, "\n".join(found)


def test_arabic_says_skip_with_one_word():
    t = translator("ar")
    assert {t(key) for key in ("broadcast.skip", "event.add.skip", "event.feedback.skip", "volunteer.skip")} == {"تخطَّ"}
    assert not [key for key, text in _texts("ar") if "تخطٍّ" in text or "تخطي" in text]


def test_turkish_suffixes_after_an_institution_take_no_apostrophe():
    """TDK: "Buca Belediyesidir", never "Buca Belediyesi'dir"; a suffix glued to {municipality}
    is written without an apostrophe."""
    found = [f"{key}: {text!r}" for key, text in _texts("tr") if "Belediyesi'" in text or "{municipality}'" in text]
    assert not found, "\n".join(found)
    notice = translator("tr")("notice.summary", municipality="Buca Belediyesi", purposes="", url="", version="")
    assert "Veri sorumlusu Buca Belediyesidir." in notice and "Belediyesi'dir" not in notice


def test_compiled_catalogs_are_inside_the_installed_package():
    package_dir = Path(locales.__file__).parent
    assert package_dir == i18n_tools.LOCALES_DIR
    for lang in LANGUAGES:
        mos = sorted((package_dir / lang / "LC_MESSAGES").glob("*.mo"))
        assert package_dir / lang / "LC_MESSAGES" / "core.mo" in mos
        assert {m.stem for m in mos} == {p.stem for p in (package_dir / lang / "LC_MESSAGES").glob("*.po")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tool = pyproject["tool"]["setuptools"]
    assert any(fnmatch.fnmatch("locales", pattern.rstrip("*") + "*") for pattern in tool["packages"]["find"]["include"])
    patterns = tool["package-data"]["locales"]
    for mo in package_dir.glob("*/LC_MESSAGES/*.mo"):
        relative = mo.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not package data"


def test_every_mo_file_loads():
    from babel.messages.mofile import read_mo

    for mo in i18n_tools.LOCALES_DIR.glob("*/LC_MESSAGES/*.mo"):
        read_mo(io.BytesIO(mo.read_bytes()))


def test_lists_in_a_message_take_the_language_separator(make_app):
    """The purposes in the onboarding thanks and the consents in /verilerim's summary: "، " in
    Arabic, ", " in Turkish and English."""
    from tests.participation_support import Chat

    app = make_app()
    expected = {"tr": ("Teşekkürler! İzin verdiğiniz amaçlar: Sorun bildirimleri, Gönüllülük, Hatırlatmalar, Duyurular.",
                       "Verdiğiniz izinler: Sorun bildirimleri, Gönüllülük, Hatırlatmalar, Duyurular\n"),
                "en": ("Thank you! The purposes you allowed: Problem reports, Volunteering, Reminders, Announcements.",
                       "Permissions given: Problem reports, Volunteering, Reminders, Announcements\n"),
                "ar": ("شكرًا! الأغراض التي سمحت بها: بلاغات المشكلات، التطوع، التذكيرات، الإعلانات.",
                       "الأذونات الممنوحة: بلاغات المشكلات، التطوع، التذكيرات، الإعلانات\n")}
    for lang, (thanks, consents) in expected.items():
        someone = Chat(app, f"list-{lang}")
        someone.send("/start")
        someone.tap(f"lang:{lang}")
        assert thanks in someone.texts(someone.tap("all"))
        someone.tap("skip")
        someone.send("/verilerim" if lang == "tr" else "/mydata")
        assert consents in someone.texts()


def test_the_privacy_notice_names_the_processors_messages_travel_through(make_app):
    """Messages go through Telegram, or Meta (WhatsApp) and Twilio: the notice says so, in every
    language, instead of promising that nothing is shared with anyone."""
    from tests.participation_support import Chat

    app = make_app()
    said = {}
    for lang in LANGUAGES:
        someone = Chat(app, f"notice-{lang}")
        someone.send("/start")
        said[lang] = someone.texts(someone.tap(f"lang:{lang}"))
    assert ("Mesajlarınız, kullandığınız kanala göre Telegram ya da Meta (WhatsApp) ve Twilio üzerinden iletilir; "
            "bu şirketler mesajları iletmek için veri işleyen olarak çalışır.") in said["tr"]
    assert "Veri sorumlusu Buca Belediyesidir." in said["tr"] and "üçüncü kişi" not in said["tr"]
    assert ("Your messages travel through Telegram, or Meta (WhatsApp) and Twilio, depending on the channel you use; "
            "these companies act as data processors to carry them.") in said["en"]
    assert "third parties" not in said["en"]
    assert "الجهة المسؤولة عن البيانات هي بلدية بوجا." in said["ar"]
    assert "تمرّ رسائلك عبر تيليغرام، أو عبر ميتا (واتساب) وتويليو" in said["ar"] and "أطراف ثالثة" not in said["ar"]
    # what a withdrawal stops is still said, as conversations/consent.py does it
    assert "(bildirimlerinizle ilgili haberler, gönüllü havuzları, hatırlatmalar, duyurular)" in said["tr"]
