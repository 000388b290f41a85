"""The rough edges a new resident and a new staff member met on the terminal (issue 14), each
through the real terminal channel (tests/terminal.py: handlers/console.py in-process): commands
in every language, a mistyped command, typed language names, cancel and stop keeping what they
should, staff who never onboarded, staff commands in /yardim and the menu, /duyurular."""
from __future__ import annotations

import re
import subprocess
import sys

from sqlmodel import select

from conversations.i18n import LANGUAGES, t_in, translator
from storage.db import transaction
from storage.models import Broadcast, ConversationSession, Staff
from tests.conftest import test_env as katilim_env
from tests.terminal import Terminal

tr, en, ar = translator("tr"), translator("en"), translator("ar")


def add_staff(app, name: str, role: str = "staff") -> None:
    with transaction(app.db) as db:
        db.add(Staff(console=name, name=name.title(), role=role))


async def onboarded(app, name: str, lang: str = "tr") -> Terminal:
    """A resident who chose `lang`, allowed everything and skipped the mahalle: at the menu."""
    term = Terminal(app, name)
    await term.open()
    await term.script(str(LANGUAGES.index(lang) + 1), "1", t_in(lang, "mahalle.skip"))
    return term


def help_commands(screen: str) -> list[str]:
    return re.findall(r"^/(\S+) — ", screen, flags=re.M)


# ---------------------------------------------------------------- commands
async def test_every_command_named_in_yardim_works_in_that_language(make_app):
    for lang in LANGUAGES:
        app = make_app()
        term = await onboarded(app, f"sakin-{lang}", lang)
        names = help_commands(await term.type("/" + app.registry.command_menu[lang][1]))  # /yardim, /help
        assert len(names) >= 10 and ("link" in names) == (lang != "tr"), (lang, names)
        for name in names:
            screen = await term.type("/" + name)
            assert t_in(lang, "engine.unknown_command", command="/" + name) not in screen, (lang, name)
            assert t_in(lang, "staff.refused") not in screen, (lang, name)
            await term.type("/" + app.registry.command_menu[lang][2])                      # /iptal, /cancel


async def test_a_mistyped_command_gets_did_you_mean(make_app):
    app = make_app()
    term = await onboarded(app, "ayse")
    for typed, meant in (("yardm", "yardim"), ("yardımm", "yardim"), ("IPTL", "iptal"), ("bldir", "bildir"),
                         ("etkinlikler", None), ("verilerimm", "verilerim"), ("bildirmlerim", "bildirimlerim"),
                         ("hlep", "yardim")):
        screen = await term.type("/" + typed)
        if meant is None:
            assert tr("engine.did_you_mean", command="/" + typed, near="/x").split("/x")[0] not in screen
            continue
        shown = "/" + typed.lower()
        assert screen.startswith(tr("engine.did_you_mean", command=shown, near="/" + meant) + "\n"), screen
    screen = await term.type("/zzzqqq")
    assert screen.startswith(tr("engine.unknown_command", command="/zzzqqq") + "\n")
    english = await onboarded(make_app(), "john", "en")
    screen = await english.type("/langauge")
    assert screen.startswith(en("engine.did_you_mean", command="/langauge", near="/language") + "\n"), screen


async def test_the_language_step_understands_typed_language_names(make_app):
    for typed, lang in (("ingilizce", "en"), ("English", "en"), ("arapça", "ar"), ("ARABIC", "ar"),
                        ("türkçe", "tr"), ("turkish", "tr"), ("العربية", "ar"), ("İngilizce", "en")):
        app = make_app()
        term = Terminal(app, f"kisi{abs(hash(typed)) % 10_000}")
        await term.open()
        screen = await term.type(typed)
        assert t_in(lang, "notice.accept_all") in screen, (typed, screen)
    await term.script("1", t_in("ar", "mahalle.skip"))
    assert en("language.changed") in await term.script("/language", "ingilizce")
    assert tr("language.changed") in await term.script("/dil", "Türkçe")


# ---------------------------------------------------------------- cancel and stop
async def test_iptal_at_a_consent_question_asks_it_again(make_app):
    app = make_app()
    term = Terminal(app, "ayse")
    await term.open()
    await term.script("1", "2", "1")            # Türkçe, one by one, reports: yes
    screen = await term.type("/iptal")
    volunteering = tr("consent.question", purpose=tr("consent.purpose.volunteering"),
                      why=tr("consent.why.volunteering"))
    assert screen.startswith(tr("cancel.onboarding") + "\n" + volunteering + "\n"), screen
    assert tr("onboarding.choose_language") not in screen


async def test_dur_in_the_middle_of_a_report_keeps_the_draft(make_app):
    app = make_app()
    term = await onboarded(app, "ayse")
    await term.script("/bildir", "1", "/konum 38.3729 27.1797", "1")   # a category, a pin in Yıldız, confirmed
    before = await term.type("Parktaki bank kırık, çocuklar için tehlikeli.")
    screen = await term.type("DUR")
    assert screen.startswith(tr("subscription.off_midway") + "\n"), screen
    prompt = before.split("\n", 1)[1] if before.startswith("✅") else before
    assert screen.endswith(prompt), (screen, before)       # the same question again
    with transaction(app.db) as db:
        session = db.get(ConversationSession, term.resident_id)
        assert session.data["description"] == "Parktaki bank kırık, çocuklar için tehlikeli."
    from storage.consents import current_consents

    with app.db.connect() as conn:
        assert current_consents(conn, term.resident_id)["announcements"] is False
    status = await term.type("/abonelik")       # asks before turning them back on
    assert status.startswith(tr("subscription.status_off") + "\n  1 · " + tr("subscription.turn_on")), status
    with app.db.connect() as conn:
        assert current_consents(conn, term.resident_id)["announcements"] is False
    assert (await term.type("1")).startswith(tr("subscription.on"))


# ---------------------------------------------------------------- staff
async def test_a_staff_member_who_never_onboarded_works_and_cancels(make_app):
    app = make_app()
    add_staff(app, "mehmet")
    term = Terminal(app, "mehmet")               # never went through onboarding
    screen = await term.type("/duyuru")
    assert screen == tr("broadcast.ask_text_tr") + "\n", screen
    screen = await term.type("Cumartesi Kozağaç'ta su kesintisi olacak.")
    assert tr("onboarding.choose_language") not in screen
    assert tr("cancel.done") in await term.type("/iptal")
    with transaction(app.db) as db:
        assert db.exec(select(Broadcast)).all() == []
    screen = await term.type("/raporlar")
    assert tr("onboarding.choose_language") not in screen and tr("staff.refused") not in screen
    screen = await term.type("/etkinlikekle")
    assert screen.startswith(tr("event.add.title_tr")), screen


async def test_staff_see_their_commands_in_yardim_and_the_menu(make_app):
    app = make_app()
    add_staff(app, "mehmet")
    term = await onboarded(app, "mehmet")
    screen = await term.type("/yardim")
    names = help_commands(screen)
    staff_names = list(app.registry.staff_menu["tr"])
    assert staff_names == ["raporlar", "duyuru", "duyurular", "etkinlikekle", "gonullucagri", "panel"]
    assert names[-len(staff_names):] == staff_names
    assert tr("help.staff") in screen
    for key in ("menu.staff_broadcast", "menu.staff_reports", "menu.staff_addevent", "menu.staff_panel"):
        assert f" · {tr(key)}\n" in screen, key
    resident = await onboarded(make_app(), "ayse")
    screen = await resident.type("/yardim")
    assert not set(help_commands(screen)) & set(staff_names) and tr("help.staff") not in screen
    assert tr("menu.staff_broadcast") not in screen


async def test_duyurular_shows_every_announcement_also_those_from_the_cli(make_app, sqlite_url, tmp_path):
    app = make_app()
    add_staff(app, "mehmet")
    text = tmp_path / "duyuru.txt"
    text.write_text("Pazar günü Kozağaç'ta pazar yeri kurulmayacak.", encoding="utf-8")
    env = katilim_env(DATABASE_URL=sqlite_url, MEDIA_DIR=str(tmp_path / "media"))
    for at in ([], ["--at", "yarın 09:00"]):
        sent = subprocess.run([sys.executable, "-m", "bot.cli", "broadcast", "send", "--text-file", str(text), *at],
                              env=env, capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
    term = await onboarded(app, "mehmet")
    screen = await term.type("/duyurular")
    assert screen.startswith(tr("broadcast.list_all_title") + "\n#2 · " + tr("broadcast.status_scheduled")), screen
    assert "\n#1 · " in screen and screen.count("Pazar günü Kozağaç'ta pazar yeri kurulmayacak.") == 2
    # not theirs: no cancel button for a staff member (an admin gets one)
    assert tr("broadcast.cancel_button", id=2) not in screen
    admin_app = make_app()
    add_staff(admin_app, "ayse", role="admin")
    admin = await onboarded(admin_app, "ayse")
    screen = await admin.type("/duyurular")
    assert f" · {tr('broadcast.cancel_button', id=2)}\n" in screen


# ---------------------------------------------------------------- catalog keys typed by staff
def test_the_cli_takes_catalog_keys_typed_with_turkish_letters(sqlite_url, tmp_path):
    env = katilim_env(DATABASE_URL=sqlite_url, MEDIA_DIR=str(tmp_path / "media"))

    def katilim(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    for typed in ("atölye", "ATÖLYE", "Odak Grup", "sosyo-kültürel"):
        added = katilim("events", "add", "--title", f"Kompost {typed}", "--type", typed, "--start", "2031-05-04 18:00",
                        "--end", "20:00", "--place", "Buca Kent Konseyi")
        assert added.returncode == 0, (typed, added.stderr)
    from storage.db import make_engine
    from storage.participation import Event

    db = make_engine(sqlite_url)
    with transaction(db) as s:
        assert [e.type for e in s.exec(select(Event).order_by(Event.id))] == [
            "atolye", "atolye", "odak_grup", "sosyo_kulturel"]
    db.dispose()
    wrong = katilim("events", "add", "--title", "X", "--type", "atölyeler", "--start", "2031-05-04 18:00",
                    "--end", "20:00", "--place", "P")
    assert wrong.returncode == 2 and "invalid choice: 'atölyeler'" in wrong.stderr
    listed = katilim("reports", "list", "--status", "İN PROGRESS")
    assert listed.returncode == 0, listed.stderr
    staff = katilim("staff", "add", "--console", "mehmet", "--department", "FEN İŞLERİ", "--department", "temizlik işleri")
    assert staff.returncode == 0, staff.stderr
    assert staff.stdout.strip().endswith("departments=fen_isleri,temizlik_isleri"), staff.stdout


async def test_staff_type_a_catalog_key_in_the_chat(make_app):
    app = make_app()
    add_staff(app, "mehmet")
    term = await onboarded(app, "mehmet")
    await term.script("/etkinlikekle", "Kompost Atölyesi", *[t_in("tr", "event.add.skip")] * 5)
    screen = await term.type("other")              # the key of "Etkinlik", typed
    from conversations.when import example_time
    from storage.db import utcnow

    assert screen.startswith(tr("event.add.start", example=example_time(utcnow(), "tr")) + "\n"), screen
    with transaction(app.db) as db:
        assert db.get(ConversationSession, term.resident_id).data["type"] == "other"


# ---------------------------------------------------------------- nothing proactive is a dead end
async def test_a_resolved_reports_page_offers_rating_and_reopening(make_app):
    from storage import reports as rp

    app = make_app()
    term = await onboarded(app, "ayse")
    resident = term.resident_id
    with transaction(app.db) as db:
        code = rp.create_report(db, prefix="BCA", resident_id=resident, category="yol",
                                description="Okulun önünde derin bir çukur var.", mahalle="kozagac").code
        rp.set_status(db, code, "resolved", "staff:1")
    page = await term.type(f"/bildirimlerim {code}")
    assert f" · {tr('report.detail_rate')}\n" in page and f" · {tr('report.detail_reopen')}\n" in page
    assert tr("report.rate_prompt", code=code) in await term.type(tr("report.detail_rate"))
    assert tr("report.rated", rating=4, code=code) in await term.type("4")
    page = await term.type(f"/bildirimlerim {code}")
    assert tr("report.detail_rate") not in page and tr("report.detail_reopen") in page   # rated once
    screen = await term.type(tr("report.detail_reopen"))
    assert screen.startswith(tr("report.reopened", code=code) + "\n"), screen
    assert tr("report.detail_reopen") not in screen.split(tr("report.reopened", code=code), 1)[1]


async def test_open_calls_can_be_browsed_and_taken_and_show_as_duties(make_app):
    from datetime import timedelta

    from conversations.domain import volunteering as call_ops
    from conversations.permissions import Actor
    from conversations.pools import join_pool
    from storage.db import utcnow

    app = make_app()
    term = await onboarded(app, "ayse")
    pool, resident = app.catalog.pools[0].key, term.resident_id
    with transaction(app.db) as db:
        join_pool(db, resident, pool, weekdays=True, weekends=True, evenings=True)
        start = utcnow() + timedelta(days=3)
        call_ops.create_call(db, Actor.cli("test"), pools=[pool], what="Sahil temizliği", place="Buca Göleti",
                             starts_at=start, ends_at=start + timedelta(hours=2), capacity=5, catalog=app.catalog,
                             tz="Europe/Istanbul")
    await term.wait()                                       # the call's message arrived; they let it pass
    await term.type("/menu")
    await term.type("/gonullu")
    screen = await term.type(tr("volunteer.open_calls"))
    assert screen.startswith(tr("volunteer.open_title") + "\n• Sahil temizliği — "), screen
    assert "(boş yer: 5/5)" in screen
    screen = await term.type(tr("volunteer.open_take", what="Sahil temizliği"))
    assert tr("volunteer.mine_title") in screen and tr("volunteer.status.accepted") in screen
    await term.type("/gonullu")
    assert (await term.type(tr("volunteer.open_calls"))).startswith(tr("volunteer.open_empty"))


async def test_the_event_list_marks_the_events_one_is_registered_for(make_app):
    from datetime import timedelta

    from conversations.attendance import register
    from conversations.domain import events as event_ops
    from conversations.permissions import Actor
    from storage.db import utcnow

    app = make_app()
    term = await onboarded(app, "ayse")
    resident = term.resident_id
    with transaction(app.db) as db:
        start = utcnow() + timedelta(days=2)
        going = event_ops.create_event(db, Actor.cli("test"), title={"tr": "İklim Paneli"}, starts_at=start,
                                       ends_at=start + timedelta(hours=2), place="Buca Kent Konseyi")
        event_ops.create_event(db, Actor.cli("test"), title={"tr": "Kompost Atölyesi"},
                               starts_at=start + timedelta(days=1), ends_at=start + timedelta(days=1, hours=2),
                               place="Buca Kent Konseyi")
        register(db, going.id, resident, now=utcnow(), offsets=[])
    screen = await term.type("/etkinlikler")
    assert "\n• ✓ İklim Paneli — " in screen and "\n• Kompost Atölyesi — " in screen
    assert tr("event.list.marks") in screen and " · ✓ İklim Paneli · " in screen
