"""The domain operations (conversations/domain/): one function per action, called alike by the chat
(Engine.handle on the console channel), the CLI (a real subprocess) and Open311, so the same action
leaves the same rows (history, audit, outbox) whoever the front end; roles and departments are
checked there, and a refusal is audited."""
from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from sqlmodel import select

from conversations.domain import broadcasts as dbc
from conversations.domain import reports as domain
from conversations.permissions import Actor, Refused, can
from storage import reports as rp
from storage.db import transaction
from storage.models import AuditLog, Broadcast, OutboxMessage, Staff
from tests.support.chat import Chat
from tests.test_broadcasts import add_resident, katilim
from tests.test_reports import CODE, _file, _katilim, _staff_at_reports

OPERATOR = f"cli:{getpass.getuser()}"


def _two_apps(make_app, tmp_path: Path):
    """Two fresh databases with the same story: Ayşe (Turkish) files a report, John (English)
    follows it: in the first through the chat (filing the same problem nearby, he is shown hers and
    follows it), in the second through domain.follow. Returns [(app, code, ayse, john)] for each."""
    worlds = []
    for name in ("chat", "cli"):
        app = make_app(database_url=f"sqlite:///{tmp_path / (name + '.db')}")
        ayse, john = Chat(app, "ayse"), Chat(app, "john")
        ayse.onboard(lang="tr")
        john.onboard(lang="en")
        _file(ayse, description="Sokak lambası yanmıyor", category="aydinlatma")
        ayse.tap("confirm")
        code = CODE.search(ayse.said).group(0)
        if name == "chat":
            _file(john, description="The street lamp is off", category="lighting")   # stops at hers
            john.tap(f"f:{code}")
            assert john.said == (f"👍 You now follow {code} and count as its supporter. We'll tell you when its "
                                 "status changes. Thank you!\nIf you like, describe what you see in a few words "
                                 f"or send a photo: we add it to report {code} for our staff.")
            john.tap("done")                                    # nothing to add
            assert john.state == "menu"
        else:
            with transaction(app.db) as db:
                assert domain.follow(db, Actor.resident(john.resident_id), code)
        worlds.append((app, code, ayse, john))
    return worlds


def _rows(app, action: str) -> tuple[list[dict], list[tuple]]:
    """The notifications queued (whole payloads, per resident) and the audit rows of `action`
    (actor, target, details)."""
    with transaction(app.db) as db:
        notes = [(o.resident_id, o.payload) for o in db.exec(select(OutboxMessage).where(
            OutboxMessage.kind == "notification").order_by(OutboxMessage.id))]
        audits = [(a.actor, a.target, a.details) for a in db.exec(select(AuditLog).where(
            AuditLog.action == action).order_by(AuditLog.id))]
    return notes, audits


def _history(app, code: str) -> list[tuple]:
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        return [(e.actor, e.kind, e.from_status, e.to_status, e.note) for e in rp.history_of(db, report.id)]


def test_a_status_change_from_the_chat_and_from_the_cli_leaves_the_same_rows(make_app, tmp_path):
    (chat_app, code, ayse, john), (cli_app, cli_code, _, _) = _two_apps(make_app, tmp_path)
    assert code == cli_code
    boss = _staff_at_reports(chat_app)
    boss.text(code)
    boss.tap("to:resolved")
    boss.text("Lamba değişti")
    assert f"✔ {code}: Çözüldü. 2 kişiye haber veriliyor." in boss.said
    out = _katilim(cli_app.settings.database_url, "set-status", code, "resolved", "--note", "Lamba değişti").stdout
    assert out == f"{code}: new -> resolved; 2 residents notified through the outbox\n"

    chat_notes, chat_audit = _rows(chat_app, "report.status")
    cli_notes, cli_audit = _rows(cli_app, "report.status")
    assert chat_notes == cli_notes
    ayse_id, john_id = ayse.resident_id, john.resident_id
    resolved = [{"key": f"rs:yes:{code}", "label": "👍 Evet, çözüldü"},
                {"key": f"rs:no:{code}", "label": "👎 Hayır, sürüyor"}]
    assert chat_notes == [
        (ayse_id, {"text": f"✅ {code} (Sokak aydınlatması) bildirimi çözüldü olarak işaretlendi.\n"
                           "Not: Lamba değişti\nSorun çözüldü mü?", "choices": resolved, "columns": 1}),
        (john_id, {"text": f"✅ Report {code} (Street lighting) has been marked as resolved.\n"
                           "Note: Lamba değişti\nIs the problem solved?",
                   "choices": [{"key": f"rs:yes:{code}", "label": "👍 Yes, solved"},
                               {"key": f"rs:no:{code}", "label": "👎 No, it's still there"}], "columns": 1})]
    details = {"from_status": "new", "to_status": "resolved", "note": "Lamba değişti"}
    assert chat_audit == [("staff:1", code, details)]
    assert cli_audit == [(OPERATOR, code, details)]
    assert _history(chat_app, code)[1:] == [("resident:2", "followed", "", "", ""),
                                            ("staff:1", "status", "new", "resolved", "Lamba değişti")]
    assert _history(cli_app, code)[1:] == [("resident:2", "followed", "", "", ""),
                                           (OPERATOR, "status", "new", "resolved", "Lamba değişti")]


def test_a_merge_from_the_chat_and_from_the_cli_leaves_the_same_rows(make_app, tmp_path):
    worlds = _two_apps(make_app, tmp_path)
    for _, _, _, john in worlds:  # a second report, of the same lamp, to merge into the first
        _file(john, description="Lamp is off", category="lighting", anyway=True)   # hers is shown: a new one
        john.tap("confirm")
    (chat_app, code, _, john), (cli_app, _, _, _) = worlds
    with transaction(chat_app.db) as db:
        duplicate = rp.list_reports(db, limit=1)[0].code
    assert duplicate != code
    boss = _staff_at_reports(chat_app)
    boss.text(duplicate)
    boss.tap("merge")
    boss.text(code)
    assert boss.keys() == ["yes", "cancel"]      # the same lamp, a few metres apart: asked, no warning
    boss.tap("yes")
    out = _katilim(cli_app.settings.database_url, "merge", duplicate, code).stdout
    assert out == f"{duplicate} merged into {code}\n"
    chat_notes, chat_audit = _rows(chat_app, "report.merged")
    cli_notes, cli_audit = _rows(cli_app, "report.merged")
    assert chat_notes == cli_notes and chat_notes[-1][0] == john.resident_id
    assert f"{duplicate}" in chat_notes[-1][1]["text"] and code in chat_notes[-1][1]["text"]
    assert chat_audit == [("staff:1", duplicate, {"into": code})]
    assert cli_audit == [(OPERATOR, duplicate, {"into": code})]


def test_reopen_rate_and_follow_from_the_chat_are_the_domain_operations(make_app, tmp_path):
    """The resident's buttons under a notification call the same functions a direct call does:
    the chat's rows equal those of conversations.domain.reports called with Actor.resident."""
    worlds = _two_apps(make_app, tmp_path)
    results = []
    for i, (app, code, ayse, john) in enumerate(worlds):
        with transaction(app.db) as db:
            domain.change_status(db, Actor.cli("cli:t"), code, "resolved")
        with transaction(app.db) as db:
            db.add(Staff(telegram_id="900"))
        if i == 0:
            ayse.tap(f"rs:no:{code}")         # not solved: reopened, the staff told
            assert ayse.said == (f"Üzgünüz. {code} bildirimini yeniden açtık ve ekibe ilettik; gelişmeleri size "
                                 "bildireceğiz.")
        else:
            with transaction(app.db) as db:
                assert domain.reopen(db, Actor.resident(ayse.resident_id), code) == "reopened"
        with transaction(app.db) as db:
            domain.change_status(db, Actor.cli("cli:t"), code, "resolved")
        if i == 0:
            john.tap(f"rr:4:{code}")
        else:
            with transaction(app.db) as db:
                domain.rate(db, Actor.resident(john.resident_id), code, 4)
        with transaction(app.db) as db:
            staff_notes = [o.payload["text"] for o in db.exec(select(OutboxMessage).where(
                OutboxMessage.address == "900"))]
            audits = [(a.actor, a.action, a.target, a.details) for a in db.exec(select(AuditLog).where(
                AuditLog.action.in_(["report.reopened", "report.followed"])).order_by(AuditLog.id))]
        results.append((_history(app, code), staff_notes, audits))
    assert results[0] == results[1]
    history, staff_notes, audits = results[0]
    code = worlds[0][1]
    assert [h[1] for h in history] == ["created", "followed", "status", "reopened", "status", "rated"]
    assert staff_notes == [f'🔁 {code}, bir sakin "çözülmedi" dediği için yeniden açıldı (1. kez). /raporlar {code}']
    assert audits == [("resident:2", "report.followed", code, {}),
                      ("resident:1", "report.reopened", code, {"count": 1})]


def test_a_broadcast_cancelled_from_the_chat_and_from_the_cli_leaves_the_same_rows(make_app, tmp_path):
    rows = []
    for name in ("chat", "cli"):
        app = make_app(database_url=f"sqlite:///{tmp_path / (name + '.db')}")
        with transaction(app.db) as db:
            add_resident(db)
            b = dbc.send(db, Actor.cli(OPERATOR), texts={"tr": "Yol çalışması"}, audience={})
        dbc.start_now(app.db, b.id, "w")
        if name == "chat":
            with transaction(app.db) as db:
                db.add(Staff(console="boss", role="admin"))
            boss = Chat(app, "boss")
            boss.onboard(lang="tr")
            boss.text("/duyurular")
            boss.tap(f"c:{b.id}")
            boss.tap("yes")
        else:
            done = katilim("broadcast", "cancel", str(b.id), db_url=app.settings.database_url, tmp_path=tmp_path)
            assert done.returncode == 0, done.stderr
            assert done.stdout == f"broadcast {b.id} cancelled: 1 message withdrawn, 0 already sent or on their way\n"
        with transaction(app.db) as db:
            audit = db.exec(select(AuditLog).where(AuditLog.action == "broadcast.cancelled")).one()
            statuses = [o.status for o in db.exec(select(OutboxMessage).where(OutboxMessage.broadcast_id == b.id))]
            rows.append((audit.target, audit.details, statuses, db.get(Broadcast, b.id).status, audit.actor))
    assert rows[0][:4] == rows[1][:4] == ("broadcast:1", {"withdrawn": 1, "already": 0}, ["cancelled"], "cancelled")
    assert (rows[0][4], rows[1][4]) == ("staff:1", OPERATOR)


# ---------------------------------------------------------------- roles and departments
def _staff(role: str = "staff", departments=(), staff_id: int = 3) -> Actor:
    return Actor(who=f"staff:{staff_id}", role=role, staff_id=staff_id, departments=frozenset(departments))


@pytest.mark.parametrize("actor, department, allowed", [
    (_staff(departments={"roads"}), "roads", True),         # one of theirs
    (_staff(departments={"roads"}), "parks", False),        # another department's
    (_staff(departments={"roads"}), "", True),              # a report with no department
    (_staff(departments={"roads"}), None, True),
    (_staff(), "parks", True),                              # a staff member with no department
    (_staff("admin", {"roads"}), "parks", True),            # an admin, always
    (_staff("viewer"), "", False),                          # a viewer, never
    (_staff("viewer", {"parks"}), "parks", False),
    (Actor.resident(4), "", False),
    (Actor.open311("crm"), "", False),
    (Actor.cli("cli:ayse"), "parks", True),
])
def test_the_department_rule_for_changing_a_report(actor, department, allowed):
    assert can(actor, "report.change", department=department) is allowed


def test_a_report_assigned_to_a_staff_member_is_theirs_whatever_its_department():
    assert can(_staff(departments={"roads"}), "report.change", department="parks", assignee_id=3)
    assert not can(_staff(departments={"roads"}), "report.change", department="parks", assignee_id=4)


def test_the_domain_applies_the_rule_and_audits_a_refusal(make_app):
    app = make_app()
    with transaction(app.db) as db:
        code = rp.create_report(db, prefix="BCA", resident_id=None, category="road", description="çukur").code
    department = ""  # the report's (storage.reports.Report.department, when the column exists)
    with transaction(app.db) as db:
        department = domain.department_of(rp.get_by_code(db, code))
        with pytest.raises(Refused):
            domain.change_status(db, _staff("viewer", staff_id=9), code, "seen")
    with transaction(app.db) as db:
        assert rp.get_by_code(db, code).status == "new"
        rows = db.exec(select(AuditLog).where(AuditLog.action == "refused"))
        refused = [(a.actor, a.target, a.details) for a in rows]
        assert refused == [("staff:9", code, {"attempted": "report.change", "role": "viewer"})]
        assert db.exec(select(AuditLog).where(AuditLog.action == "report.status")).all() == []
    mine = {department} if department else {"roads"}   # no department on the report: any staff member may
    with transaction(app.db) as db:
        changed = domain.change_status(db, _staff(departments=mine), code, "seen")
        assert (changed.previous, changed.report.status, changed.told) == ("new", "seen", [])
    with transaction(app.db) as db:
        with pytest.raises(Refused):
            domain.reopen(db, _staff(), code)
        with pytest.raises(Refused):
            dbc.cancel(db, _staff(staff_id=5), dbc.send(db, _staff(staff_id=6), texts={"tr": "x"}, audience={}).id)
    with transaction(app.db) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action == "refused").order_by(AuditLog.id))
        refused = [(a.actor, a.details["attempted"]) for a in rows]
    assert refused == [("staff:9", "report.change"), ("staff:3", "report.reopen"), ("staff:5", "broadcast.cancel")]
