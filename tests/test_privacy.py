"""Consent withdrawal is honoured, purpose by purpose; every staff-only command refused to a
resident is audited under a pseudonym; a rating only for a resolved report. Through the real
engine (one transaction per message, as every channel does), on SQLite and PostgreSQL where it
matters."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from conversations import attendance, pools, reminders
from conversations.domain import broadcasts as dbc
from conversations.domain import events as event_ops
from conversations.domain import reports as reports_domain
from conversations.i18n import t_in
from conversations.permissions import Actor
from conversations.reports import CODE_RE
from storage import broadcasts as bc
from storage import reports as rp
from storage.db import transaction, utcnow
from storage.models import AuditLog, ChannelIdentity, ConversationSession, OutboxMessage
from storage.participation import CallResponse, PoolMembership, Reminder, VolunteerCall
from tests.participation_support import make_staff
from tests.support.chat import Chat
from tests.support.texts import consent_needed
from tests.test_volunteer import SATURDAY_10, join, new_call

PIN = (38.38500, 27.17500)


def file_report(person: Chat, description: str = "Kaldırım taşları sökülmüş, yürünmüyor") -> str:
    person.send("/bildir")
    person.tap("c:road")
    person.location(*PIN)
    person.tap("yes")                      # the pin's mahalle
    person.send(description)
    person.tap("done")
    person.tap("confirm")
    code = CODE_RE.search(person.texts())
    assert code, person.texts()
    return code.group(1)


def withdraw(person: Chat, purpose: str) -> str:
    person.send("/menu")
    person.tap("privacy")
    person.tap(f"p:{purpose}")
    return person.texts()


def outbox_for(app, resident_id: int, **where) -> list[OutboxMessage]:
    with Session(app.db) as db:
        query = select(OutboxMessage).where(OutboxMessage.resident_id == resident_id)
        for key, value in where.items():
            query = query.where(getattr(OutboxMessage, key) == value)
        return list(db.exec(query.order_by(OutboxMessage.id)))


# ---------------------------------------------------------------- consent withdrawal, per purpose
def test_withdrawing_reports_stops_the_news_of_reports(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse, mehmet, other = Chat(app, "ayse").onboard(), Chat(app, "mehmet").onboard(), Chat(app, "zeynep").onboard()
    code = file_report(ayse)
    mehmet_id, other_id = mehmet.resident_id, other.resident_id
    with transaction(app.db) as db:
        rp.follow(db, code, mehmet_id)
        rp.follow(db, code, other_id)
    said = withdraw(ayse, "reports")
    assert t_in("tr", "privacy.stops.reports") in said
    said = withdraw(mehmet, "reports")
    with Session(app.db) as db:
        assert rp.followers_of(db, rp.get_by_code(db, code).id) == [other_id]
        assert rp.get_by_code(db, code).supporters == 2                 # an anonymous count, kept
    with transaction(app.db) as db:
        reports_domain.change_status(db, Actor(who="staff:1", role="admin"), code, "resolved", catalog=app.catalog)
    assert outbox_for(app, ayse.resident_id, kind="notification") == []      # no news for the reporter
    assert outbox_for(app, mehmet.resident_id, kind="notification") == []
    assert len(outbox_for(app, other.resident_id, kind="notification")) == 1  # who still consents is told
    # her report stays hers to see; a new report asks for the consent again
    ayse.send("/raporlarim")
    assert f"r:{code}" in ayse.keys()
    ayse.send("/bildir")
    assert ayse.texts() == consent_needed(app, "tr", "reports")


def test_withdrawing_volunteering_leaves_the_pools_and_the_calls(make_app, db_url):
    app = make_app(database_url=db_url)
    vol, reserve = Chat(app, "vol").onboard(), Chat(app, "yedek").onboard()
    join(vol, "environment", ["weekends"], skills="Arıcılık bilirim")
    join(reserve, "environment", ["weekends"])
    call = new_call(app, ["environment"], SATURDAY_10, 1)
    vol.tap(f"vc:{call.id}:y")
    reserve.tap(f"vc:{call.id}:y")                       # full: on the reserve list
    vol_id = vol.resident_id
    with Session(app.db) as db:
        assert db.get(VolunteerCall, call.id).accepted == 1
        assert db.exec(select(Reminder).where(Reminder.resident_id == vol_id,
                                              Reminder.status == "pending")).all()
    said = withdraw(vol, "volunteering")
    assert t_in("tr", "privacy.stops.volunteering") in said
    with Session(app.db) as db:
        assert db.exec(select(PoolMembership).where(PoolMembership.resident_id == vol_id)).all() == []
        assert "Arıcılık" not in str([m.skills for m in db.exec(select(PoolMembership))])
        assert db.exec(select(CallResponse).where(CallResponse.resident_id == vol_id)).all() == []
        assert db.get(VolunteerCall, call.id).accepted == 0           # the place is free again
        assert db.exec(select(Reminder).where(Reminder.resident_id == vol_id,
                                              Reminder.status == "pending")).all() == []
    assert [c.key for c in reserve.notifications()[-1].choices] == [f"vc:{call.id}:t"]   # offered to the reserve
    # no new calls reach them, and an old call's button asks for the consent
    call2 = new_call(app, ["environment"], "2030-12-07 10:00", 3)
    with Session(app.db) as db:
        assert vol_id not in pools.matching_volunteers(db, db.get(VolunteerCall, call2.id), "Europe/Istanbul")
    vol.tap(f"vc:{call2.id}:y")
    assert vol.texts() == t_in("tr", "volunteer.call.unknown")
    # a volunteer who withdrew before withdrawals had effects (their answer still on record): the
    # call's button asks for the consent instead of taking a place
    reserve_id = reserve.resident_id
    with transaction(app.db) as db:
        from storage.consents import record_consent

        record_consent(db, reserve_id, "volunteering", False, "old")
    reserve.tap(f"vc:{call.id}:t")
    assert reserve.texts() == t_in("tr", "volunteer.call.needs_consent")
    with Session(app.db) as db:
        assert db.get(VolunteerCall, call.id).accepted == 0


def test_withdrawing_reminders_drops_them_now(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse").onboard()
    with transaction(app.db) as db:
        event = event_ops.create_event(db, Actor.cli("test"), title={"tr": "Atölye"},
                                       starts_at=utcnow() + timedelta(days=3),
                                       ends_at=utcnow() + timedelta(days=3, hours=2), place="Kent Konseyi")
    ayse.send("/etkinlikler")
    ayse.tap(f"e:{event.id}")
    ayse.tap("rsvp")
    with Session(app.db) as db:
        assert len(db.exec(select(Reminder).where(Reminder.status == "pending")).all()) == 2
    said = withdraw(ayse, "reminders")
    assert t_in("tr", "privacy.stops.reminders") in said
    ayse_id = ayse.resident_id
    with Session(app.db) as db:
        rows = db.exec(select(Reminder).where(Reminder.resident_id == ayse_id)).all()
        assert [(r.status, r.note) for r in rows] == [("dropped", "no_consent")] * 2
        assert attendance.rsvp_of(db, event.id, ayse_id).status == "going"   # the registration stays
    with transaction(app.db) as db:   # at their time, nothing goes
        assert reminders.send_due_reminders(db, utcnow() + timedelta(days=3) - timedelta(hours=24)).sent == 0
    withdraw(ayse, "reminders")        # given again: the registration's reminders come back
    with Session(app.db) as db:
        rows = db.exec(select(Reminder).where(Reminder.resident_id == ayse_id)).all()
        assert [r.status for r in rows] == ["pending"] * 2


def test_withdrawing_announcements_cancels_the_queued_ones(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "501", channel="telegram").onboard()
    stopper = Chat(app, "502", channel="telegram").onboard()
    with transaction(app.db) as db:
        b = bc.create(db, texts={"tr": "Su kesintisi"}, audience={}, created_by="staff:1")
    assert bc.claim_due(app.db, "w1") == [b.id]
    assert dbc.fan_out(app.db, b.id, "w1") == 2
    said = withdraw(ayse, "announcements")
    assert t_in("tr", "privacy.stops.announcements") in said
    stopper.send("DUR")
    for person in (ayse, stopper):
        assert [r.status for r in outbox_for(app, person.resident_id, broadcast_id=b.id)] == ["cancelled"]
    with transaction(app.db) as db:
        assert bc.count_recipients(db, {}) == 0


def test_the_privacy_texts_say_what_a_withdrawal_stops():
    """The notice and the withdrawal messages exist in every language and say what the code does."""
    for lang in ("tr", "en", "ar"):
        for purpose in ("reports", "volunteering", "reminders", "announcements"):
            assert t_in(lang, f"privacy.stops.{purpose}") != f"privacy.stops.{purpose}"
    assert "/myreports" in t_in("en", "privacy.stops.reports") and "/deletemydata" in t_in("en", "privacy.stops.reports")
    assert "skills" in t_in("en", "privacy.stops.volunteering") and "reserve" in t_in("en", "privacy.stops.volunteering")
    summary = t_in("en", "notice.summary")
    assert "what it covered stops" in summary and "without your name, your words or your photos" in summary


# ---------------------------------------------------------------- staff refusals are audited
def test_every_staff_command_refused_to_a_resident_is_audited(make_app):
    app = make_app()
    boss = make_staff(app, Chat(app, "boss")).onboard()
    eve = Chat(app, "eve").onboard()
    eve_id = eve.resident_id
    staff_commands = set()
    for alias in sorted(app.registry.spellings):
        boss.send("/iptal")
        boss.send(f"/{alias}")
        with Session(app.db) as db:
            state = db.exec(select(ConversationSession.state).join(
                ChannelIdentity, ChannelIdentity.resident_id == ConversationSession.resident_id).where(
                ChannelIdentity.address == "boss")).one()
        if not app.registry.states[state].staff_only:
            continue
        staff_commands.add(alias)
        before = audited(app, eve_id)
        eve.send(f"/{alias}")
        assert eve.messages() == [t_in("tr", "staff.refused"), t_in("tr", "menu.title")], alias
        assert audited(app, eve_id) == before + 1, alias
    assert {"etkinlikekle", "addevent", "gonullucagri", "volunteercall", "raporlar", "reports", "duyuru",
            "announce", "duyurular", "broadcasts"} <= staff_commands
    with Session(app.db) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action == "staff.refused")).all()
    assert {r.actor for r in rows} == {f"resident:{eve_id}"}       # never "console:eve"


def audited(app, resident_id: int) -> int:
    with Session(app.db) as db:
        return len(db.exec(select(AuditLog).where(AuditLog.action == "staff.refused",
                                                  AuditLog.actor == f"resident:{resident_id}")).all())


# ---------------------------------------------------------------- a rating only for a resolved report
def test_a_rating_only_for_a_resolved_report(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse").onboard()
    code = file_report(ayse)
    ayse.tap(f"rr:5:{code}")                              # not resolved yet
    assert ayse.texts() == t_in("tr", "report.error.rate_not_resolved", code=code,
                                status=t_in("tr", "report.status.new"))
    with transaction(app.db) as db:
        reports_domain.change_status(db, Actor(who="staff:1", role="admin"), code, "resolved", catalog=app.catalog)
    ayse.tap(f"rs:yes:{code}")
    ayse.tap(f"rr:4:{code}")
    assert ayse.messages() == [t_in("tr", "report.rated", rating=4, code=code), t_in("tr", "menu.title")]
    ayse.tap(f"rs:no:{code}")                             # not solved after all: reopened
    ayse.tap(f"rr:1:{code}")                              # the rating buttons of the old message
    assert ayse.texts() == t_in("tr", "report.error.rate_not_resolved", code=code,
                                status=t_in("tr", "report.status.in_progress"))
    ayse_id = ayse.resident_id
    with transaction(app.db) as db:
        assert rp.get_by_code(db, code).rating == 4
        with pytest.raises(rp.ReportError) as refused:
            reports_domain.rate(db, Actor.resident(ayse_id), code, 3)
        assert refused.value.key == "report.error.rate_not_resolved"
