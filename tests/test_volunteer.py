"""Volunteer pools and calls for volunteers, through the real engine (one transaction per message)
and the real CLI: joining and leaving pools, matching by availability, a call filling up, the
reserve list, and the reserve promotion race (two taps at once: exactly one wins) on SQLite and
PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from conversations import participation_data
from conversations.domain import volunteering as call_ops
from conversations.i18n import t_in, translator
from conversations.permissions import Actor, Refused
from conversations.when import span_text
from storage.db import aware, transaction, utcnow
from storage.models import AuditLog, Staff
from storage.participation import CallResponse, PoolMembership, Reminder, VolunteerCall
from tests.conftest import test_env as subprocess_env
from tests.participation_support import local_time, make_staff
from tests.support.chat import Chat
from tests.support.texts import consent_needed

SATURDAY_10 = "2030-11-30 10:00"     # Saturday morning, Istanbul
IST = ZoneInfo("Europe/Istanbul")
WEDNESDAY_19 = "2030-11-27 19:00"    # Wednesday evening
WEDNESDAY_10 = "2030-11-27 10:00"    # Wednesday morning


def join(person: Chat, pool: str, avail: list[str], tags: list[str] = (), skills: str | None = None) -> None:
    person.send("/gonullu")
    person.tap(f"p:{pool}")
    person.tap("join")
    for tag in tags:
        person.tap(f"s:{tag}")
    person.tap("done")
    if skills:
        person.send(skills)
    else:
        person.tap("skip")
    for a in avail:
        person.tap(f"a:{a}")
    person.tap("done")
    keys = person.keys()
    person.tap("keep" if "keep" in keys else "skip")
    assert "save" in person.keys(), person.texts()
    person.tap("save")


def new_call(app, pools, start: str, capacity: int, what="Fidan dikimi", end_hours=3) -> VolunteerCall:
    tz = app.engine.config.timezone
    starts = local_time(start, tz)
    with transaction(app.db) as db:
        return call_ops.create_call(db, Actor.cli("test"), pools=pools, what=what, place="Buca Göleti",
                                    starts_at=starts, ends_at=starts + timedelta(hours=end_hours), capacity=capacity,
                                    catalog=app.catalog, tz=tz)


def responses(app, call_id) -> dict[int, tuple[str, int | None]]:
    with Session(app.db) as db:
        return {r.resident_id: (r.status, r.position)
                for r in db.exec(select(CallResponse).where(CallResponse.call_id == call_id))}


def test_join_update_and_leave_a_pool_needs_consent(make_app):
    app = make_app()
    ayse = Chat(app, "ayse").onboard(consent="none")
    ayse.send("/gonullu")
    assert ayse.texts() == consent_needed(app, "tr", "volunteering")
    ayse.tap("yes")
    assert "p:environment" in ayse.keys() and "Sürdürülebilir Kalkınma Amaçları (SKA): 11, 13, 15" in ayse.texts()

    join(ayse, "environment", ["weekends", "evenings"], tags=["first_aid", "driving"], skills="Fidan dikimi")
    assert t_in("tr", "volunteer.joined", pool="Çevre ve iklim") in ayse.texts()
    assert "✓ Çevre ve iklim" in ayse.texts()
    with Session(app.db) as db:
        (m,) = db.exec(select(PoolMembership)).all()
    assert (m.pool, m.skill_tags, m.skills, m.weekdays, m.weekends, m.evenings) == \
        ("environment", ["driving", "first_aid"], "Fidan dikimi", False, True, True)

    # the mahalle defaults to the resident's own
    ayse.send("/menu")
    ayse.tap("mahalle")
    ayse.send("Kozağaç")
    ayse.send("/gonullu")
    ayse.tap("p:care")
    ayse.tap("join")
    ayse.tap("done")
    ayse.tap("skip")
    ayse.tap("a:weekdays")
    ayse.tap("done")
    assert "keep" in ayse.keys() and "Kozağaç" in ayse.texts()
    ayse.tap("keep")
    assert "Mahalle: Kozağaç" in ayse.texts()
    ayse.tap("save")
    with Session(app.db) as db:
        assert {m.pool: m.mahalle for m in db.exec(select(PoolMembership))} == \
            {"environment": None, "care": "kozagac"}

    ayse.tap("p:environment")
    assert "leave" in ayse.keys()
    ayse.tap("leave")
    ayse.tap("yes")
    assert t_in("tr", "volunteer.left", pool="Çevre ve iklim") in ayse.texts()
    with Session(app.db) as db:
        assert [m.pool for m in db.exec(select(PoolMembership))] == ["care"]


def test_calls_reach_members_of_the_pools_when_they_are_available(make_app):
    app = make_app()
    weekend = Chat(app, "weekend").onboard()
    join(weekend, "environment", ["weekends"])
    evening = Chat(app, "evening").onboard()
    join(evening, "environment", ["evenings"])
    weekday = Chat(app, "weekday").onboard()
    join(weekday, "environment", ["weekdays"])
    other_pool = Chat(app, "animals").onboard()
    join(other_pool, "animals", ["weekdays", "weekends", "evenings"])
    withdrawn = Chat(app, "withdrawn").onboard()
    join(withdrawn, "environment", ["weekdays", "weekends", "evenings"])
    withdrawn.send("/menu")
    withdrawn.tap("privacy")
    withdrawn.tap("p:volunteering")  # consent withdrawn: no more calls

    call = new_call(app, ["environment"], SATURDAY_10, 2)
    assert set(responses(app, call.id)) == {weekend.resident_id}
    (invite,) = weekend.notifications()
    assert "Fidan dikimi" in invite.text and "30 Kasım 2030 Cumartesi 10:00–13:00" in invite.text
    assert [c.key for c in invite.choices] == [f"vc:{call.id}:y", f"vc:{call.id}:n"]

    evening_call = new_call(app, ["environment"], WEDNESDAY_19, 2)
    assert set(responses(app, evening_call.id)) == {evening.resident_id}
    morning_call = new_call(app, ["environment", "animals"], WEDNESDAY_10, 2)
    assert set(responses(app, morning_call.id)) == {weekday.resident_id, other_pool.resident_id}
    assert withdrawn.notifications() == []


def test_a_call_fills_up_then_the_reserve_list_takes_a_freed_place(make_app):
    app = make_app()
    people = []
    for name in ("ali", "berk", "cem"):
        p = Chat(app, name).onboard()
        join(p, "environment", ["weekends"])
        people.append(p)
    ali, berk, cem = people
    call = new_call(app, ["environment"], SATURDAY_10, 1)

    cem.send("/etkinlikler")  # busy elsewhere: the call's buttons still work
    ali.tap(f"vc:{call.id}:y")
    assert t_in("tr", "volunteer.call.accepted").split("{")[0] in ali.texts()
    assert f"vc:{call.id}:c" in ali.keys()
    berk.tap(f"vc:{call.id}:y")
    assert berk.texts() == t_in("tr", "volunteer.call.full_reserve", capacity=1, position=1)
    cem.tap(f"vc:{call.id}:y")
    assert "2" in cem.texts() and responses(app, call.id)[cem.resident_id] == ("reserve", 2)
    assert cem.keys()[-1] != f"vc:{call.id}:y"
    cem.tap("menu")  # the conversation cem was in goes on
    ali_id, cem_id = ali.resident_id, cem.resident_id
    with Session(app.db) as db:
        assert db.get(VolunteerCall, call.id).accepted == 1
        # accepted volunteers get reminders like event attendees (consent "reminders" was given)
        assert {r.resident_id for r in db.exec(select(Reminder).where(Reminder.subject_kind == "call"))} == {ali_id}

    ali.tap(f"vc:{call.id}:c")
    assert ali.keys() == [f"vc:{call.id}:cy"]
    ali.tap(f"vc:{call.id}:cy")
    assert ali.texts() == t_in("tr", "volunteer.call.cancelled_by_you")
    for reserve in (berk, cem):
        offer = reserve.notifications()[-1]
        assert [c.key for c in offer.choices] == [f"vc:{call.id}:t"]
    cem.tap(f"vc:{call.id}:t")
    assert t_in("tr", "volunteer.call.place_yours").split("{")[0] in cem.texts()
    berk.tap(f"vc:{call.id}:t")
    assert berk.texts() == t_in("tr", "volunteer.call.taken_by_other", position=1)
    assert responses(app, call.id) == {ali.resident_id: ("cancelled", None), berk.resident_id: ("reserve", 1),
                                       cem.resident_id: ("accepted", None)}
    with Session(app.db) as db:
        reminders = {(r.resident_id, r.status)
                     for r in db.exec(select(Reminder).where(Reminder.subject_kind == "call"))}
    assert reminders == {(ali_id, "dropped"), (cem_id, "pending")}

    cem.send("/gonullu")
    cem.tap("mine")
    assert "Fidan dikimi" in cem.texts() and f"c:{call.id}" in cem.keys()


@pytest.mark.parametrize("rounds", [3])
def test_reserve_promotion_race_exactly_one_wins(make_app, db_url, rounds):
    app = make_app(database_url=db_url)
    holder = Chat(app, "holder").onboard()
    join(holder, "environment", ["weekends"])
    racers = []
    for name in ("r1", "r2"):
        p = Chat(app, name).onboard()
        join(p, "environment", ["weekends"])
        racers.append(p)
    for round_ in range(rounds):
        call = new_call(app, ["environment"], SATURDAY_10, 1, what=f"round {round_}")
        holder.tap(f"vc:{call.id}:y")
        for p in racers:
            p.tap(f"vc:{call.id}:y")
        holder.tap(f"vc:{call.id}:cy")  # a place is free: both reserves are offered it
        barrier = threading.Barrier(2)
        results: dict[str, str] = {}

        def tap(p: Chat, barrier=barrier, results=results, call=call) -> None:
            barrier.wait()
            results[p.address] = p.texts(p.tap(f"vc:{call.id}:t"))

        threads = [threading.Thread(target=tap, args=(p,)) for p in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        yours = t_in("tr", "volunteer.call.place_yours").split("{")[0]
        won = [a for a, text in results.items() if text.startswith(yours)]
        assert len(won) == 1, results
        states = responses(app, call.id)
        assert sorted(states[p.resident_id][0] for p in racers) == ["accepted", "reserve"]
        with Session(app.db) as db:
            assert db.get(VolunteerCall, call.id).accepted == 1


def test_staff_post_a_call_on_the_chat_and_residents_cannot(make_app):
    app = make_app()
    vol = Chat(app, "vol").onboard()
    join(vol, "disaster", ["weekends"])
    resident = Chat(app, "someone").onboard()
    resident.send("/gonullucagri")
    assert resident.messages() == [t_in("tr", "staff.refused"), t_in("tr", "menu.title")]

    staff = make_staff(app, Chat(app, "memur").onboard())
    staff.send("/gonullucagri")
    staff.tap("done")
    assert t_in("tr", "volunteer.call_new.pick_pool") in staff.texts()
    staff.tap("p:disaster")
    staff.tap("done")
    staff.send("Toplanma alanı tatbikatı")
    staff.send("Buca Kent Meydanı")
    staff.send("30.11.2030 10:00")
    staff.send("9:00")
    assert t_in("tr", "event.end_before_start") in staff.texts()
    staff.send("12:30")
    staff.send("5")
    assert "30 Kasım 2030 Cumartesi 10:00–12:30" in staff.texts()
    staff.tap("send")
    assert staff.messages() == [translator("tr").n("volunteer.call_new.sent", 1, id=1, invited=1),
                                t_in("tr", "menu.title")]
    assert "Toplanma alanı tatbikatı" in vol.notifications()[0].text


def test_cli_sends_a_call_and_lists_responses(make_app, tmp_path):
    app = make_app()
    vol = Chat(app, "vol").onboard()
    join(vol, "education", ["weekdays"])
    env = subprocess_env(DATABASE_URL=app.settings.database_url, MEDIA_DIR=str(tmp_path / "media"))

    def katilim(*args):
        return subprocess.run([sys.executable, "-m", "bot.cli", "volunteers", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    ok = katilim("call", "--pool", "education", "--what", "Etüt desteği", "--where", "Gençlik Merkezi",
                 "--start", WEDNESDAY_10, "--end", "12:00", "--people", "2")
    assert ok.returncode == 0, ok.stderr
    assert "invited 1" in ok.stdout
    (invite,) = vol.notifications()
    call_id = int(invite.choices[0].key.split(":")[1])
    vol.tap(f"vc:{call_id}:y")
    listed = katilim("responses", str(call_id))
    assert listed.returncode == 0 and "accepted" in listed.stdout
    cancelled = katilim("cancel-call", str(call_id))
    assert cancelled.returncode == 0 and f"call {call_id} cancelled; 1 volunteer told" in cancelled.stdout
    assert vol.notifications()[-1].text == ("❌ «Etüt desteği» (27 Kasım 2030 Çarşamba 10:00–12:00) gönüllü çağrısı "
                                           "iptal edildi. Gösterdiğiniz ilgi için teşekkürler!")


def test_export_and_erase(make_app):
    app = make_app()
    vol = Chat(app, "vol").onboard()
    join(vol, "environment", ["weekends"], skills="Bahçıvanlık")
    call = new_call(app, ["environment"], SATURDAY_10, 3)
    vol.tap(f"vc:{call.id}:y")
    with Session(app.db) as db:
        exported = participation_data.export_resident(db, vol.resident_id)
    assert exported["volunteer_pools"][0]["skills"] == "Bahçıvanlık"
    assert exported["volunteer_calls"][0]["status"] == "accepted"
    vol.send("/verilerimisil")
    vol.tap("yes")
    with Session(app.db) as db:
        assert db.exec(select(PoolMembership)).all() == []
        assert db.exec(select(CallResponse)).all() == []
        assert db.exec(select(Reminder)).all() == []
        assert db.get(VolunteerCall, call.id).accepted == 0  # the place is free again


# ---------------------------------------------------------------- what a page does not understand (issue 14, item 14)
@pytest.mark.parametrize("page", ["p:environment", "mine"])  # a pool's page, "my duties"
def test_a_volunteering_page_asks_again_on_text_it_does_not_understand(make_app, page):
    app = make_app()
    ayse = Chat(app, "ayse").onboard()
    ayse.send("/gonullu")
    ayse.tap(page)
    (shown,) = ayse.last
    ayse.send("bu ne demek")
    assert [out.text for out in ayse.last] == ["Lütfen seçeneklerden birini seçin.", shown.text]
    assert ayse.keys() == [c.key for c in shown.choices]
    ayse.tap("back")  # the list again, only when asked for
    assert "p:environment" in ayse.keys()


def test_a_call_for_one_volunteer_starting_tomorrow(make_app):
    app = make_app()
    staff = make_staff(app, Chat(app, "memur").onboard())
    staff.send("/gonullucagri")
    staff.tap("p:environment")
    staff.tap("done")
    staff.send("Fidan dikimi")
    staff.send("Buca Göleti")
    in_two_days = (utcnow().astimezone(IST) + timedelta(days=2)).strftime("%d.%m.%Y")
    assert staff.texts() == f"Ne zaman başlıyor? Örneğin {in_two_days} 14:00 ya da yarın 10:00"
    staff.send("yarın 10:00")
    staff.send("12:00")
    assert staff.texts() == "Kaç gönüllü gerekiyor? (1 ile 10.000 arasında bir sayı yazın)"
    staff.send("10001")
    assert staff.texts() == ("Lütfen 1 ile 10.000 arasında bir sayı yazın.\n"
                             "Kaç gönüllü gerekiyor? (1 ile 10.000 arasında bir sayı yazın)")
    staff.send("1")
    staff.tap("send")
    day = utcnow().astimezone(IST).date() + timedelta(days=1)
    with Session(app.db) as db:
        call = db.get(VolunteerCall, 1)
    assert (call.capacity, aware(call.starts_at), call.created_by) == (
        1, datetime.combine(day, time(10), tzinfo=IST), f"staff:{staff_id(app, staff)}")


def staff_id(app, person: Chat) -> int:
    with Session(app.db) as db:
        return db.exec(select(Staff.id).where(Staff.console == person.address)).one()


# ---------------------------------------------------------------- the staff operations (domain/volunteering.py)
def test_call_operations_refuse_a_viewer_audit_it_and_cancel_for_staff(make_app):
    app = make_app()
    vol = Chat(app, "vol").onboard()
    join(vol, "disaster", ["weekends"])
    call = new_call(app, ["disaster"], "2030-11-30 10:00", capacity=2)
    vol.tap(f"vc:{call.id}:y")
    viewer = Actor(who="staff:9", role="viewer", staff_id=9)
    tz = app.engine.config.timezone
    with transaction(app.db) as db:
        with pytest.raises(Refused):
            call_ops.create_call(db, viewer, pools=["disaster"], what="x", place="y", starts_at=call.starts_at,
                                 ends_at=call.ends_at, capacity=1, catalog=app.catalog, tz=tz)
        with pytest.raises(Refused):
            call_ops.cancel_call(db, viewer, call.id, tz=tz)
    with transaction(app.db) as db:
        done = call_ops.cancel_call(db, Actor(who="staff:1", role="staff", staff_id=1), call.id, tz=tz)
    assert (done.id, done.told, done.already) == (call.id, 1, False)
    with Session(app.db) as db:
        assert [(a.actor, a.action, a.target, a.details) for a in db.exec(
            select(AuditLog).where(AuditLog.actor.in_(("staff:9", "staff:1"))).order_by(AuditLog.id))] == [
            ("staff:9", "refused", "call:new", {"attempted": "volunteer.manage", "role": "viewer"}),
            ("staff:9", "refused", f"call:{call.id}", {"attempted": "volunteer.manage", "role": "viewer"}),
            ("staff:1", "volunteer.call_cancelled", f"call:{call.id}", {"told": 1})]
        assert [c.id for c in db.exec(select(VolunteerCall))] == [call.id]


def test_cli_closes_a_call_the_accepted_keep_their_duty(make_app, tmp_path):
    app = make_app()
    ali, berk, cem = (Chat(app, name).onboard() for name in ("ali", "berk", "cem"))
    for person in (ali, berk, cem):
        join(person, "education", ["weekdays"])
    call = new_call(app, ["education"], WEDNESDAY_10, capacity=1, what="Etüt desteği")
    ali.tap(f"vc:{call.id}:y")   # the place
    berk.tap(f"vc:{call.id}:y")  # the reserve list; cem does not answer
    env = subprocess_env(DATABASE_URL=app.settings.database_url, MEDIA_DIR=str(tmp_path / "media"))

    def katilim(*args):
        return subprocess.run([sys.executable, "-m", "bot.cli", "volunteers", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    closed = katilim("close-call", str(call.id))
    assert (closed.returncode, closed.stdout, closed.stderr) == (0, f"call {call.id} closed; 2 volunteers told\n", "")
    when = span_text(call.starts_at, call.ends_at, "tr", "Europe/Istanbul")
    notice = (f"🔒 «Etüt desteği» ({when}) gönüllü çağrısı kapandı: yeterli gönüllü bulundu. "
              "Gösterdiğiniz ilgi için teşekkürler!")
    assert berk.notifications()[-1].text == notice and cem.notifications()[-1].text == notice
    assert not any(n.text == notice for n in ali.notifications())
    assert katilim("close-call", str(call.id)).stdout == f"call {call.id} closed; 0 volunteers told\n"  # once
    listed = katilim("calls")
    assert listed.stdout.startswith(f"call {call.id} [closed] Etüt desteği · ")

    assert cem.texts(cem.tap(f"vc:{call.id}:y")) == "«Etüt desteği» çağrısı artık açık değil."
    ali_id = ali.resident_id
    with Session(app.db) as db:  # the duty's reminders stay
        assert {(r.resident_id, r.status) for r in db.exec(select(Reminder))} == {(ali_id, "pending")}
    ali.send("/gonullu")
    ali.tap("mine")
    assert f"c:{call.id}" in ali.keys()  # the duty is still theirs
    given_back = ali.texts(ali.tap(f"vc:{call.id}:cy"))
    assert given_back == "Yeriniz iptal edildi; zamanında haber verdiğiniz için teşekkürler."
    assert not any("vc:" in c.key and c.key.endswith(":t") for n in berk.notifications() for c in n.choices)
    cancelled = katilim("cancel-call", str(call.id))
    assert cancelled.stdout == f"call {call.id} cancelled; 1 volunteer told\n"  # berk, still on the reserve list
