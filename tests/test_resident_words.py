"""Issue 14, residents: mahalles as Turks write them, categories by the words people use, and
descriptions (emoji-only, over-long), through Engine.handle on the console channel and the CLI."""
from __future__ import annotations

import json
from datetime import timezone

import pytest

from conversations.i18n import translator
from conversations.messages import Kind, Media
from storage import reports as rp
from storage.db import transaction
from storage.models import Resident, Staff
from tests.support.chat import Chat
from tests.test_reports import CODE, PIN, _katilim

tr, en, ar = translator("tr"), translator("en"), translator("ar")


def _mahalle_of(app, chat: Chat) -> str | None:
    with transaction(app.db) as db:
        return db.get(Resident, chat.resident_id).mahalle


# ---------------------------------------------------------------- 6. mahalle as Turks write it
@pytest.mark.parametrize("typed, key", [("Yıldız Mahallesi", "yildiz"), ("yildiz mah.", "yildiz"),
                                        ("kozağaç mh", "kozagac"), ("Buca Koop Mahallesi", "buca_koop"),
                                        ("KOZAĞAÇ MH.", "kozagac"), ("Mah. Yıldız", "yildiz")])
def test_onboarding_takes_the_mahalle_as_typed(make_app, typed, key):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr", mahalle=typed)
    assert _mahalle_of(app, chat) == key


def test_mahalle_words_in_reports_staff_filters_and_the_cli(make_app, sqlite_url):
    app = make_app(database_url=sqlite_url)
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    ayse.text("/bildir")
    ayse.text("çukur")
    ayse.text("Buca Koop Mahallesi")
    assert ayse.state == "report.street"
    assert ayse.said == tr("report.street_prompt", mahalle="Buca Koop")
    with transaction(app.db) as db:
        db.add(Staff(console="boss"))
        code = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                mahalle="kozagac").code
        other = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                 mahalle="yildiz").code
    boss = Chat(app, "boss")
    boss.onboard(lang="tr")
    boss.text("/raporlar")
    boss.tap("mah")
    boss.text("kozağaç mh")
    assert boss.state == "staffreport.home"
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
        session = db.get(ConversationSession, chat.resident_id)
        state, category = session.state, session.data.get("category")
    chat.text("/iptal")
    return category if state == "report.location" else None


def test_every_synonym_in_every_language_finds_its_category(make_app):
    from bot.catalog import load_catalog

    app = make_app()
    catalog = app.catalog
    chats = {lang: Chat(app, f"r-{lang}") for lang in ("tr", "en", "ar")}
    for lang, chat in chats.items():
        chat.onboard(lang=lang)
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
    chat.onboard(lang=lang)
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
    assert chat.state == "report.describe"


@pytest.mark.parametrize("text", ["👍👍👍", "🕳️🕳️", "!!! ???", "ok 😡😡😡"])
def test_emoji_only_description_is_too_short(make_app, text):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr")
    _to_describe(chat)
    chat.text(text)
    assert chat.state == "report.describe"
    assert [o.text for o in chat.last] == [tr("report.describe_short"),
                                           tr("report.describe_prompt", category="Sokak aydınlatması")]


def test_an_over_long_description_is_trimmed_never_refused(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr")
    _to_describe(chat)
    long = "Lamba yanmıyor. " * 400                    # 6,400 characters: over the engine's 2,000 too
    assert len(long) > app.settings.max_text_length
    chat.text(long)
    assert chat.state == "report.photos"
    assert chat.last[0].text == tr("report.describe_trimmed", limit=1000)
    chat.tap("done")
    chat.tap("confirm")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, CODE.search(chat.said).group(0))
        assert len(report.description) == 1000 and report.description.startswith("Lamba yanmıyor. Lamba")
    chat.text("x" * 5000)                             # elsewhere the engine's limit still stands
    assert chat.last[0].text == tr("engine.too_long", limit=app.settings.max_text_length)


# ---------------------------------------------------------------- 7. a pin gets a mahalle; a pin far away is questioned
def test_a_pin_gets_its_mahalle_in_one_tap_and_a_far_pin_is_questioned(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr", mahalle="kozagac")
    chat.text("/bildir")
    chat.text("çöp")
    assert chat.last[-1].request_location == "📍 Konumumu gönder"           # the one-tap button
    assert chat.last[-1].location_hint == tr("report.location_hint")        # how, where there is none
    chat.pin(41.01, 28.97)                                                   # Istanbul
    assert chat.state == "report.pin"
    assert [o.text for o in chat.last] == [tr("report.pin_outside", municipality="Buca Belediyesi")]
    assert tr("report.location_saved") not in chat.said
    assert chat.keys() == ["keep", "list"] and chat.last[-1].request_location == "📍 Konumumu gönder"
    chat.pin(38.37292, 27.17973)                                             # then a pin in Yıldız
    assert [o.text for o in chat.last] == [tr("report.pin_mahalle", mahalle="Yıldız")]
    assert chat.last[0].remove_keyboard                                      # the button goes
    chat.tap("yes")
    assert chat.state == "report.describe"
    chat.text("Konteyner taşmış, etrafa yayılmış")
    chat.tap("done")
    chat.tap("confirm")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, CODE.search(chat.said).group(0))
        assert (report.latitude, report.longitude, report.mahalle) == (38.37292, 27.17973, "yildiz")


def test_another_mahalle_for_a_pin_keeps_the_pin_and_a_far_pin_may_stay(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr")
    chat.text("/bildir")
    chat.text("köpek")
    chat.pin(38.37292, 27.17973)
    chat.text("Kozağaç mh.")                          # "no, it is Kozağaç": typed, the pin stays
    assert chat.state == "report.describe"
    chat.text("Yaralı bir köpek var")
    chat.tap("done")
    assert tr("report.location_mahalle", mahalle="Kozağaç") in chat.said and "38.37292" in chat.said
    chat.tap("confirm")
    code = CODE.search(chat.said).group(0)
    chat.text("/bildir")
    chat.text("gürültü")
    chat.pin(41.01, 28.97)
    chat.tap("keep")                                 # "yes, it is there": kept, no mahalle
    assert chat.state == "report.describe"
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert (report.latitude, report.mahalle) == (38.37292, "kozagac")


def test_the_terminal_takes_typed_coordinates_as_a_pin(tmp_path):
    from tests.test_console import katilim

    lines = ["merhaba", "1", "1", "yildiz mah.", "/bildir", "lamba", "41.01 28.97", "38.37292, 27.17973", "1",
             "Lamba yanmıyor, sokak karanlık", "bitti", "1"]
    done = katilim(tmp_path, "chat", "--as", "ayse", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for text in (tr("mahalle.saved", mahalle="Yıldız"), tr("report.pin_outside", municipality="Buca Belediyesi"),
                 tr("report.pin_mahalle", mahalle="Yıldız"), tr("report.photos_prompt", max=3),
                 tr("report.summary", category="Sokak aydınlatması", description="Lamba yanmıyor, sokak karanlık",
                    location=tr("report.location_pin", lat="38.37292", lon="27.17973") + " · "
                    + tr("report.location_mahalle", mahalle="Yıldız"), photos=0),
                 "⏱ Bu tür bildirimlere genellikle 3 iş günü içinde yanıt veriyoruz."):
        assert text in out, f"{text!r} not in:\n{out[-3000:]}"


# ---------------------------------------------------------------- 9. photos
@pytest.mark.parametrize("word", ["tamam", "devam", "bitti", "Bitti.", "TAMAM"])
def test_after_a_photo_devam_and_typed_words_move_on(make_app, photo, word):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="tr")
    _to_describe(chat)
    chat.text("Lamba yanmıyor")
    assert chat.keys() == ["done"] and chat.last[-1].choices[0].label == tr("report.photos_skip")
    chat.photo(photo)
    assert [o.text for o in chat.last] == [tr("report.photo_saved", n=1, max=3) + "\n"
                                           + "2 fotoğraf daha ekleyebilir ya da ✅ Devam düğmesine basabilirsiniz."]
    assert [c.label for c in chat.last[-1].choices] == ["✅ Devam"]
    chat.photo(photo)
    assert chat.last[-1].text.endswith("1 fotoğraf daha ekleyebilir ya da ✅ Devam düğmesine basabilirsiniz.")
    chat.text(word)
    assert chat.state == "report.summary"
    chat.tap("e:description")                        # back at the photos later: still "✅ Devam"
    chat.text("Lamba hiç yanmıyor")
    assert chat.state == "report.summary"


def test_photos_step_shows_devam_once_a_photo_came_with_the_description(make_app, photo):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard(lang="en")
    chat.text("/report")
    chat.text("lamp")
    chat.text("Yıldız")
    chat.text("In front of the school")
    chat.send(Kind.PHOTO, text="The lamp is off", media=[Media(ref=str(photo), content_type="image/jpeg")])
    assert chat.state == "report.photos"
    assert [c.label for c in chat.last[-1].choices] == ["✅ Continue"]
    assert chat.last[-1].text == (en("report.photo_saved", n=1, max=3)
                                  + "\nYou can add 2 more photos, or tap ✅ Continue.")
    chat.text("done")
    assert chat.state == "report.summary"


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "p.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 a photo")
    return path


# ---------------------------------------------------------------- 10. following keeps what the resident wrote
def test_following_a_similar_report_keeps_the_text_and_photos_for_staff(make_app, photo):
    app = make_app()
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="tr")
    ayse.text("/bildir")
    ayse.text("çukur")
    ayse.pin(*PIN)
    ayse.tap("yes")
    ayse.text("Kaldırımda derin bir çukur var")
    ayse.photo(photo)
    ayse.tap("done")
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    # John: category and place, and before he writes a word he sees Ayşe's report with its photo
    john.text("/bildir")
    john.text("asfalt")
    john.pin(38.38530, 27.17520)
    john.tap("yes")
    assert john.state == "report.duplicate"
    shown = [o for o in john.last if o.photo_path]
    assert len(shown) == 1 and shown[0].photo_path == str(photo)
    assert tr("report.detail_description", description="Kaldırımda derin bir çukur var") in shown[0].text
    assert john.keys() == [f"f:{code}", "file", "back"]
    john.tap(f"f:{code}")
    assert john.state == "report.support"
    assert [o.text for o in john.last] == [tr("report.followed", code=code), tr("report.support_prompt", code=code)]
    assert [c.label for c in john.last[-1].choices] == [tr("report.support_skip")]
    second = photo.with_name("p2.jpg")
    second.write_bytes(b"\xff\xd8\xff\xe0 another photo")
    john.photo(second)
    assert [c.label for c in john.last[-1].choices] == [tr("report.support_done")]
    john.text("Dün akşam bir bisikletli düştü")
    assert john.state == "menu" and john.last[0].text == tr("report.support_saved", code=code)
    john_id = john.resident_id
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert rp.count_reports(db) == 1 and report.supporters == 1
        [comment] = [e for e in rp.history_of(db, report.id) if e.kind == "supporter_comment"]
        assert (comment.note, comment.actor) == ("Dün akşam bir bisikletli düştü", f"resident:{john_id}")
        at = (comment.at if comment.at.tzinfo else comment.at.replace(tzinfo=timezone.utc)).isoformat()
        assert [(m.path, m.event_id) for m in rp.media_of(db, report.id)] == [(str(photo), None),
                                                                               (str(second), comment.id)]
    # staff see it in the report's history
    with transaction(app.db) as db:
        db.add(Staff(console="boss"))
    boss = Chat(app, "boss")
    boss.onboard(lang="tr")
    boss.text(f"/raporlar {code}")
    assert "Dün akşam bir bisikletli düştü" in boss.said
    assert [o.photo_path for o in boss.last if o.photo_path] == [str(photo), str(second)]
    # his export holds it
    john.text("/verilerim")
    exported = json.loads(next(o for o in john.last if o.document).document.data)
    assert exported["supporter_comments"] == [{"code": code, "at": at, "text": "Dün akşam bir bisikletli düştü",
                                               "photos": ["p2.jpg"]}]


def test_a_place_changed_from_the_summary_finds_a_similar_report_and_keeps_the_draft(make_app, photo):
    app = make_app()
    ayse, john = Chat(app, "ayse"), Chat(app, "john")
    ayse.onboard(lang="tr")
    john.onboard(lang="en")
    ayse.text("/bildir")
    ayse.text("lamba")
    ayse.text("Yıldız")
    ayse.text("Okulun önü")
    ayse.text("Lamba yanmıyor")
    ayse.tap("done")
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    john.text("/report")
    john.text("street light")
    john.text("Kozağaç")
    john.text("Market")
    john.text("The lamp is off at night")
    john.photo(photo)
    john.tap("done")
    john.tap("e:location")                           # oh, it was in Yıldız after all
    john.text("yildiz")
    john.text("Near the school")
    assert john.state == "report.duplicate"
    john.tap(f"f:{code}")                           # what he wrote goes with the follow
    assert john.state == "menu"
    assert [o.text for o in john.last][:2] == [en("report.followed", code=code), en("report.support_saved", code=code)]
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert [e.note for e in rp.history_of(db, report.id) if e.kind == "supporter_comment"] == [
            "The lamp is off at night"]
        assert [m.path for m in rp.media_of(db, report.id)] == [str(photo)]


# ---------------------------------------------------------------- issue 15: the usual response time
@pytest.mark.parametrize("lang, typed, expected", [
    ("tr", "çukur", "⏱ Bu tür bildirimlere genellikle 5 iş günü içinde yanıt veriyoruz."),          # 40 working h
    ("tr", "çöp", "⏱ Bu tür bildirimlere genellikle 1 iş günü içinde yanıt veriyoruz."),            # 8 working h
    ("tr", "köpek", "⏱ Bu tür bildirimlere genellikle 24 saat içinde yanıt veriyoruz."),           # 24 calendar h
    ("en", "rubbish", "⏱ We usually respond to this kind of report within 1 working day."),
    ("en", "water", "⏱ We usually respond to this kind of report within 2 working days."),
    ("en", "dog", "⏱ We usually respond to this kind of report within 24 hours."),
    ("ar", "قمامة", "⏱ نردّ عادةً على هذا النوع من البلاغات خلال يوم عمل واحد."),
    ("ar", "ماء", "⏱ نردّ عادةً على هذا النوع من البلاغات خلال يومَي عمل."),
    ("ar", "حفرة", "⏱ نردّ عادةً على هذا النوع من البلاغات خلال 5 أيام عمل."),
])
def test_the_resident_is_told_the_usual_response_time(make_app, lang, typed, expected):
    app = make_app()
    chat = Chat(app, "r")
    chat.onboard(lang=lang)
    chat.text("/bildir" if lang == "tr" else "/report")
    chat.text(typed)
    chat.text("Kozağaç")
    chat.text("Okulun önünde")
    chat.text({"tr": "Burada bir sorun var", "en": "There is a problem here", "ar": "هناك مشكلة هنا"}[lang])
    chat.tap("done")
    chat.tap("confirm")
    code = CODE.search(chat.said).group(0)
    command = {"tr": "/bildirimlerim", "en": "/myreports", "ar": "/myreports"}[lang]
    assert chat.last[0].text == translator(lang)("report.saved", code=code, command=command) + "\n" + expected


def test_migration_0020_adds_and_drops_the_supporter_columns(db_url):
    from alembic import command
    from sqlalchemy import inspect

    from storage.db import make_engine
    from storage.migrate import alembic_config, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    assert "event_id" in {c["name"] for c in inspect(engine).get_columns("report_media")}
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    command.downgrade(cfg, "0019_report_page")
    assert "event_id" not in {c["name"] for c in inspect(engine).get_columns("report_media")}
    command.upgrade(cfg, "heads")
    assert "event_id" in {c["name"] for c in inspect(engine).get_columns("report_media")}
    engine.dispose()


def test_a_supporter_comment_follows_its_writer_when_two_residents_become_one(make_app, photo):
    from conversations.linking import merge

    app = make_app()
    ayse, john, john_wa = Chat(app, "ayse"), Chat(app, "john"), Chat(app, "john-2")
    for chat in (ayse, john, john_wa):
        chat.onboard(lang="tr")
    ayse.text("/bildir")
    ayse.text("lamba")
    ayse.text("Yıldız")
    ayse.text("Okulun önü")
    ayse.text("Lamba yanmıyor")
    ayse.tap("done")
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    john_wa.text("/bildir")
    john_wa.text("ışık")
    john_wa.text("yildiz mh")
    john_wa.text("Okulun önü")
    john_wa.tap(f"f:{code}")
    john_wa.text("Haftalardır karanlık")
    keep, gone = john.resident_id, john_wa.resident_id
    with transaction(app.db) as db:
        merge(db, keep, gone, app.engine.config)
    john.text("/verilerim")
    exported = json.loads(next(o for o in john.last if o.document).document.data)
    assert [(c["code"], c["text"]) for c in exported["supporter_comments"]] == [(code, "Haftalardır karanlık")]
    john.text("/verilerimisil")
    john.tap("yes")
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert [e.note for e in rp.history_of(db, report.id) if e.kind == "supporter_comment"] == [""]
