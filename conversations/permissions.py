"""Who may do what: one check for the staff console, the chat and the CLI (issue 15).

Roles (storage.models.STAFF_ROLES), the same record everywhere:
- admin: everything, including staff accounts, API keys and the audit log;
- staff: reads every report, changes the reports of their departments (or assigned to them),
  files reports on a resident's behalf;
- viewer: reads only.
The CLI acts as an admin (whoever can run it owns the database anyway), named "cli:USER".
Besides staff, an `Actor` is a resident ("resident:ID": reopens, rates and follows reports), an
Open311 client ("open311:<key name>": files reports) or the system ("system": scheduled jobs).
The domain operations (conversations/domain/) check every action here; the front ends do not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from conversations.i18n import N_

ROLES = ("admin", "staff", "viewer")  # a staff record's role
OTHER_ROLES = ("resident", "open311", "system")  # who else acts
ROLE_NAMES = {"admin": N_("panel.role.admin"), "staff": N_("panel.role.staff"), "viewer": N_("panel.role.viewer")}

# action → the roles allowed (a staff member's "report.change" is also limited to their departments)
ACTIONS: dict[str, tuple[str, ...]] = {
    "staff.manage": ("admin",),
    "apikeys.manage": ("admin",),
    "audit.read": ("admin",),
    "report.read": ("admin", "staff", "viewer"),
    "report.change": ("admin", "staff"),
    "report.file": ("admin", "staff"),  # on a resident's behalf
    "report.submit": ("resident", "open311", "admin", "staff", "system"),  # a new report, of one's own
    "report.reopen": ("resident", "system"),  # "not solved" under a resolved report's notification
    "report.rate": ("resident", "system"),
    "report.follow": ("resident",),
    "report.support": ("resident",),  # a follower's comment and photos, for staff
    "broadcast.send": ("admin", "staff"),  # create, schedule
    "broadcast.cancel": ("admin", "staff"),  # a staff member cancels only their own
    "account.own": ("admin", "staff", "viewer"),  # one's own language, second factor, sessions
    "event.manage": ("admin", "staff"),           # create, edit, cancel events
    "volunteer.manage": ("admin", "staff"),       # post and cancel calls for volunteers
}


@dataclass(frozen=True)
class Actor:
    """Who acts: `who` names them in the audit log ("staff:3", "cli:ayse")."""

    who: str
    role: str
    staff_id: int | None = None
    departments: frozenset[str] = field(default_factory=frozenset)
    resident_id: int | None = None

    @classmethod
    def cli(cls, who: str) -> "Actor":
        return cls(who=who, role="admin")

    @classmethod
    def resident(cls, resident_id: int) -> "Actor":
        return cls(who=f"resident:{resident_id}", role="resident", resident_id=resident_id)

    @classmethod
    def open311(cls, key_name: str) -> "Actor":
        return cls(who=f"open311:{key_name}"[:64], role="open311")

    @classmethod
    def system(cls, who: str = "system") -> "Actor":
        return cls(who=who, role="system")

    @classmethod
    def of_staff(cls, staff, departments=()) -> "Actor":
        return cls(who=f"staff:{staff.id}", role=staff.role, staff_id=staff.id, departments=frozenset(departments))

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Refused(Exception):
    """The actor may not do this. `key` is the catalog message each front end shows."""

    def __init__(self, action: str, key: str = N_("panel.refused.role"), **params) -> None:
        super().__init__(action)
        self.action = action
        self.key = key
        self.params = params


def can(actor: Actor, action: str, *, department: str | None = None, assignee_id: int | None = None,
        owner: str | None = None) -> bool:
    """Whether the actor may do `action` (on a report of `department`, assigned to `assignee_id`;
    on a broadcast created by `owner`).

    report.change, for a staff member: a report of one of their departments, a report with no
    department, any report when they have no department, or one assigned to them."""
    if actor.role not in ACTIONS.get(action, ()):
        return False
    if action == "report.change" and actor.role == "staff":
        if assignee_id is not None and assignee_id == actor.staff_id:
            return True
        return not department or not actor.departments or department in actor.departments
    if action == "broadcast.cancel" and actor.role != "admin":
        return owner is not None and owner == actor.who
    return True


def check(actor: Actor, action: str, **scope) -> None:
    """Raise Refused unless the actor may do `action`."""
    if not can(actor, action, **scope):
        raise Refused(action)


def can_some(actor: Actor, action: str) -> bool:
    """Whether the actor's role allows `action` at all (a staff member's departments and
    assignments are checked per report with `can`): shows or hides a bulk form."""
    return actor.role in ACTIONS.get(action, ())
