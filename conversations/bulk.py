"""Bulk actions of the staff console's list (issue 15): assign reports to a staff member, or
change their status, several at a time.

Each report goes through its domain operation (conversations/domain/reports.py `assign`,
`change_status`: the actor's role and departments checked, the history, the audit row and the
residents' notifications through the outbox, as from the chat's /raporlar), in the caller's
transaction. Reports the actor may not change are left alone and counted, the refusal audited.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session

from conversations.domain import reports as domain
from conversations.domain import triage
from conversations.i18n import N_
from conversations.permissions import Actor, Refused, can, can_some
from storage import reports as rp
from storage.audit import audit
from storage.models import Staff

BULK_MAX = 200


@dataclass
class Outcome:
    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (code, catalog key)


class BulkError(ValueError):
    def __init__(self, key: str, **params) -> None:
        super().__init__(key)
        self.key, self.params = key, params


def _reports(db: Session, actor: Actor, codes: list[str], action: str, outcome: Outcome) -> list[rp.Report]:
    if not can_some(actor, "report.change"):       # a viewer: refused outright
        raise Refused("report.change")
    if len(codes) > BULK_MAX:
        raise BulkError(N_("panel.bulk.too_many"), most=BULK_MAX)
    found = []
    for code in codes:
        report = rp.get_by_code(db, code)
        if report is None:
            outcome.failed.append((code, N_("report.error.unknown_code")))
        elif not can(actor, "report.change", department=report.department, assignee_id=report.assignee_id):
            outcome.refused.append(report.code)
        else:
            found.append(report)
    if outcome.refused:
        audit(db, actor.who, "panel.refused", "report.bulk", bulk=action, codes=outcome.refused[:50], role=actor.role)
    return found


def assign(db: Session, actor: Actor, codes: list[str], assignee_id: int | None, *, catalog,
           now: datetime | None = None) -> Outcome:
    """Assign the reports to a staff member (None: to nobody): the report page's assignment
    (conversations/domain/triage.py `assign`) for each."""
    outcome = Outcome()
    reports = _reports(db, actor, codes, "assign", outcome)
    if assignee_id is not None:
        staff = db.get(Staff, assignee_id)
        if staff is None or not staff.active or staff.role == "viewer":
            raise BulkError(N_("panel.bulk.bad_assignee"))
    for report in reports:
        before = report.assignee_id
        if triage.assign(db, actor, report.code, assignee_id=assignee_id or 0, catalog=catalog,
                         now=now).assignee_id != before:
            outcome.changed.append(report.code)
    return outcome


def change_status(db: Session, actor: Actor, codes: list[str], status: str, note: str = "", *, catalog=None,
                  tz: str = "Europe/Istanbul", now: datetime | None = None) -> Outcome:
    """Set the status of the reports: the chat's status change for each (residents told in their
    language through the outbox). A rejection needs a note (its reason)."""
    outcome = Outcome()
    if status not in rp.STATUSES or status == "merged":
        raise BulkError(N_("report.error.bad_status"), status=status)
    note = (note or "").strip()
    if status == "rejected" and len(note) < 3:
        raise BulkError(N_("panel.bulk.reason_needed"))
    for report in _reports(db, actor, codes, "status", outcome):
        if report.status == status:
            continue
        try:
            domain.change_status(db, actor, report.code, status, note=note,
                                 reason=note if status == "rejected" else "", catalog=catalog, tz=tz, now=now)
        except rp.ReportError as err:
            outcome.failed.append((report.code, err.key))
            continue
        outcome.changed.append(report.code)
    return outcome


__all__ = ["assign", "change_status", "Outcome", "BulkError", "Refused", "BULK_MAX"]
