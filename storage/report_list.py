"""The staff console's report queries (issue 15): one filter for the list, its exports, the map
and the live updates, so each shows exactly the same set.

`Filters` holds what a clerk chose (statuses, categories, mahalle, departments, assignee, a date
range, overdue only, free text); `conditions` turns it into SQL conditions on `report`, which
the indexes of migration 0017 serve: (status, created_at), (department, status, created_at),
(mahalle, created_at), the unique code. Free text is folded (conversations.text.fold) and every
word must occur in `report.search_text`; a whole tracking code is looked up by the code.
Storage holds no user-facing text: labels are the console's (handlers/panel/).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import and_, func, or_
from sqlalchemy import select as core_select
from sqlmodel import Session, select

from storage.db import aware, utcnow
from storage.reports import OPEN_STATUSES, STATUSES, Report, overdue_condition, search_condition

CODE = re.compile(r"^\s*([A-Za-z]{1,8}-\d{4}-\d{6})\s*$")
# assignee filter: a staff id, "me" (resolved by the caller to an id), "none" (nobody), "" (any)
NOBODY = -1
# sortable columns: name → (column, default direction descending)
SORTS = {"created": (Report.created_at, True), "updated": (Report.updated_at, True), "code": (Report.code, False),
         "status": (Report.status, False), "category": (Report.category, False),
         "mahalle": (Report.mahalle, False), "department": (Report.department, False),
         "due": (Report.due_at, False), "supporters": (Report.supporters, True)}
MAX_PAGE = 200
# the map draws at most this many pins (the newest of the filtered set) and says so
MAP_LIMIT = 5_000


@dataclass(frozen=True)
class Filters:
    statuses: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    mahalle: str = ""
    departments: tuple[str, ...] = ()
    assignee: int | None = None          # a staff id, NOBODY, or None (any)
    since: datetime | None = None        # created at or after
    until: datetime | None = None        # created before
    overdue: bool = False
    text: str = ""
    changed_after: datetime | None = None   # live updates: updated after this instant

    def but(self, **changes: Any) -> "Filters":
        return replace(self, **changes)


def conditions(filters: Filters, *, now: datetime | None = None) -> list:
    found = []
    if filters.statuses:
        found.append(Report.status.in_([s for s in filters.statuses if s in STATUSES]))
    if filters.categories:
        found.append(Report.category.in_(list(filters.categories)))
    if filters.mahalle:
        found.append(Report.mahalle == filters.mahalle)
    if filters.departments:
        found.append(Report.department.in_(list(filters.departments)))
    if filters.assignee == NOBODY:
        found.append(Report.assignee_id.is_(None))
    elif filters.assignee is not None:
        found.append(Report.assignee_id == filters.assignee)
    if filters.since is not None:
        found.append(Report.created_at >= filters.since)
    if filters.until is not None:
        found.append(Report.created_at < filters.until)
    if filters.overdue:
        found += overdue_condition(now or utcnow())
    if filters.changed_after is not None:
        found.append(Report.updated_at > filters.changed_after)
    text = (filters.text or "").strip()
    if text:
        code = CODE.match(text)
        found += [Report.code == code.group(1).upper()] if code else search_condition(text)
    return found


def is_overdue(report: Report, now: datetime) -> bool:
    due = report.due_at
    if due is None or report.status not in OPEN_STATUSES:
        return False
    return aware(due) < now


@dataclass
class Page:
    reports: list[Report]
    total: int
    offset: int
    limit: int
    sort: str
    descending: bool
    cursor: datetime | None = None      # the newest updated_at of the filtered set (live updates)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.reports) < self.total

    @property
    def has_previous(self) -> bool:
        return self.offset > 0


def _order(sort: str, descending: bool | None):
    column, default_desc = SORTS.get(sort, SORTS["created"])
    desc = default_desc if descending is None else descending
    if desc:
        return (column.desc(), Report.id.desc()), desc
    return (column.asc(), Report.id.asc()), desc


def page(db: Session, filters: Filters, *, sort: str = "created", descending: bool | None = None,
         offset: int = 0, limit: int = 50, now: datetime | None = None) -> Page:
    """One page of the filtered reports with the total count (offset paging: a clerk jumps to a
    page; the count says how many there are)."""
    limit = max(1, min(MAX_PAGE, limit))
    offset = max(0, offset)
    where = conditions(filters, now=now)
    order, desc = _order(sort if sort in SORTS else "created", descending)
    reports = list(db.exec(select(Report).where(*where).order_by(*order).offset(offset).limit(limit)))
    total = db.exec(select(func.count()).select_from(Report).where(*where)).one()
    return Page(reports, total, offset, limit, sort if sort in SORTS else "created", desc)


def iterate(db: Session, filters: Filters, *, now: datetime | None = None, batch: int = 1000) -> Iterable[Report]:
    """Every report of the filtered set, oldest first (exports), in batches by id (keyset)."""
    where = conditions(filters, now=now)
    last = 0
    while True:
        rows = list(db.exec(select(Report).where(*where, Report.id > last).order_by(Report.id).limit(batch)))
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        db.expunge_all()


def codes_matching(db: Session, filters: Filters, codes: Iterable[str], *, now: datetime | None = None) -> list[str]:
    """Those of `codes` that are in the filtered set (a bulk action acts on what the clerk sees)."""
    wanted = sorted({c.strip().upper() for c in codes if c and c.strip()})
    if not wanted:
        return []
    return list(db.exec(select(Report.code).where(Report.code.in_(wanted), *conditions(filters, now=now))
                        .order_by(Report.id)))


def map_points(db: Session, filters: Filters, *, now: datetime | None = None,
               limit: int = MAP_LIMIT) -> tuple[list[tuple], int]:
    """The newest `limit` reports of the filtered set as (code, status, category, lat, lon,
    mahalle, overdue) rows, and how many the set holds. Plain rows, no ORM objects: a map of the
    whole district is thousands of them."""
    now = now or utcnow()
    where = conditions(filters, now=now)
    t = Report.__table__.c
    late = and_(t.status.in_(OPEN_STATUSES), t.due_at.is_not(None), t.due_at < now)
    stmt = (core_select(t.code, t.status, t.category, t.latitude, t.longitude, t.mahalle, late)
            .where(*where).order_by(t.created_at.desc(), t.id.desc()).limit(limit))
    rows = db.connection().execute(stmt).all()
    total = len(rows) if len(rows) < limit else db.exec(select(func.count()).select_from(Report).where(*where)).one()
    return [tuple(r) for r in rows], total


def latest_change(db: Session, filters: Filters, *, now: datetime | None = None) -> datetime | None:
    """The newest updated_at of the filtered set: the cursor live updates start from."""
    found = db.exec(select(func.max(Report.updated_at)).where(*conditions(filters.but(changed_after=None),
                                                                           now=now))).one()
    return aware(found) if found else None


def changed_since(db: Session, filters: Filters, since: datetime, *, limit: int = 50,
                  now: datetime | None = None) -> list[Report]:
    """Reports of the filtered set changed (or filed) after `since`, oldest change first."""
    where = conditions(filters.but(changed_after=since), now=now)
    return list(db.exec(select(Report).where(*where).order_by(Report.updated_at, Report.id).limit(limit)))


# ---------------------------------------------------------------- the dashboard
@dataclass
class Dashboard:
    by_status: dict[str, int]
    overdue_by_department: dict[str, int]
    new_today: int
    first_responses: list[float]        # seconds from filing to the first answer (last 30 days)

    @property
    def median_first_response(self) -> float | None:
        values = sorted(self.first_responses)
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def dashboard(db: Session, *, today_start: datetime, window_start: datetime, departments: tuple[str, ...] = (),
              now: datetime | None = None) -> Dashboard:
    """Counts for the home page: by status, overdue per department, filed since `today_start`,
    and the first-response times of reports filed since `window_start` (limited to
    `departments` when given)."""
    now = now or utcnow()
    scope = [Report.department.in_(list(departments))] if departments else []
    by_status = {s: 0 for s in STATUSES}
    for status, count in db.exec(select(Report.status, func.count()).where(*scope).group_by(Report.status)):
        by_status[status] = count
    overdue = dict(db.exec(select(Report.department, func.count()).where(*scope, *overdue_condition(now))
                           .group_by(Report.department)).all())
    new_today = db.exec(select(func.count()).select_from(Report).where(*scope, Report.created_at >= today_start)).one()
    pairs = db.exec(select(Report.created_at, Report.first_response_at).where(
        *scope, Report.created_at >= window_start, Report.first_response_at.is_not(None))).all()
    seconds = [(aware(b) - aware(a)).total_seconds() for a, b in pairs]
    return Dashboard(by_status, overdue, new_today, seconds)


# ---------------------------------------------------------------- the daily overdue summary
def overdue_of(db: Session, now: datetime, *, departments: Iterable[str] = (), staff_id: int | None = None,
               limit: int = 10) -> tuple[int, list[Report]]:
    """How many reports are overdue at `now`, and the `limit` longest overdue: of `departments` or
    assigned to `staff_id` (every department when none is given)."""
    where = overdue_condition(now)
    departments = sorted(set(departments))
    if departments:
        mine = Report.department.in_(departments)
        where.append(or_(mine, Report.assignee_id == staff_id) if staff_id is not None else mine)
    total = db.exec(select(func.count()).select_from(Report).where(*where)).one()
    rows = list(db.exec(select(Report).where(*where).order_by(Report.due_at, Report.id).limit(limit))) if total else []
    return total, rows


__all__ = ["Filters", "conditions", "page", "iterate", "map_points", "changed_since", "latest_change",
           "codes_matching", "dashboard", "is_overdue", "overdue_of", "overdue_condition", "NOBODY", "SORTS",
           "MAP_LIMIT"]
