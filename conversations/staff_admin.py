"""Staff accounts and one's own console account, as operations: each checks the actor's role,
writes its audit row and the change in the caller's transaction (one transaction), and raises
Refused (no right) or StaffError (bad input) with a catalog key. The staff console's /panel/staff
and /panel/account pages and `katilim staff add` call these; nothing else changes staff records.

Second factor (TOTP, RFC 6238 with pyotp): a code is accepted in a window of one step (30 s)
either side, and only if its time step is later than the last one accepted (`totp_last_timecode`),
so a code seen over a shoulder cannot be used again; at most TOTP_TRIES wrong codes per
TOTP_TRY_WINDOW (the audit log counts them)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pyotp
from pyotp.exceptions import OTPVerificationError
from sqlmodel import Session, func, select

from conversations.i18n import N_
from conversations.panel_link import issue_login_link
from conversations.permissions import ROLES, Actor, Refused, check
from storage import panel
from storage.audit import audit
from storage.db import utcnow
from storage.models import AuditLog, Staff

PANEL_LOCALES = ("tr", "en")
TOTP_TRIES = 5
TOTP_TRY_WINDOW = timedelta(minutes=5)
TOTP_ISSUER = "Katılım"


class StaffError(ValueError):
    def __init__(self, key: str, **params) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def _active_admins(db: Session, *, besides: int) -> int:
    return db.exec(select(func.count()).select_from(Staff)
                   .where(Staff.role == "admin", Staff.active, Staff.id != besides)).one()


def _taken(db: Session, column, value, staff_id: int | None) -> bool:
    if not value:
        return False
    other = db.exec(select(Staff.id).where(column == value)).first()
    return other is not None and other != staff_id


def find_staff(db: Session, *, telegram: str | None = None, whatsapp: str | None = None,
               console: str | None = None) -> Staff | None:
    """The staff record with one of these addresses (active or not)."""
    for column, value in ((Staff.telegram_id, telegram), (Staff.whatsapp, whatsapp), (Staff.console, console)):
        if value:
            found = db.exec(select(Staff).where(column == value)).first()
            if found is not None:
                return found
    return None


def save_staff(db: Session, actor: Actor, *, staff_id: int | None = None, name: str | None = None,
               role: str | None = None, departments=None, telegram: str | None = None, whatsapp: str | None = None,
               console: str | None = None, known_departments=None, language: str | None = None) -> Staff:
    """Add a staff member, or change one (by id, else by one of their addresses). Fields left None
    stay as they are. A role change or new departments end the member's console sessions."""
    check(actor, "staff.manage")
    whatsapp = whatsapp.removeprefix("whatsapp:").replace(" ", "") if whatsapp else whatsapp
    if role is not None and role not in ROLES:
        raise StaffError(N_("panel.staff.bad_role"), role=role)
    if language is not None and language not in PANEL_LOCALES:
        raise StaffError(N_("panel.account.bad_language"))
    if departments is not None and known_departments is not None:
        for department in departments:
            if department not in known_departments:
                raise StaffError(N_("panel.staff.unknown_department"), department=department)
    if staff_id is not None:
        staff = db.get(Staff, staff_id)
        if staff is None:
            raise StaffError(N_("panel.staff.not_found"), id=staff_id)
    else:
        staff = find_staff(db, telegram=telegram, whatsapp=whatsapp, console=console)
    new = staff is None
    staff = staff or Staff(role="staff")
    for column, value, what in ((Staff.telegram_id, telegram, "telegram"), (Staff.whatsapp, whatsapp, "whatsapp"),
                                (Staff.console, console, "console")):
        if _taken(db, column, value, staff.id):
            raise StaffError(N_("panel.staff.taken"), what=what, value=value)
    if new and not (telegram or whatsapp or console):
        raise StaffError(N_("panel.staff.no_address"))
    changed = []
    old_role = staff.role
    if role is not None and role != staff.role:
        if not new and old_role == "admin" and staff.active and not _active_admins(db, besides=staff.id):
            raise StaffError(N_("panel.staff.last_admin"))
        staff.role = role
        changed.append("role")
    for attr, value in (("telegram_id", telegram), ("whatsapp", whatsapp), ("console", console)):
        if value and getattr(staff, attr) != value:
            setattr(staff, attr, value)
            changed.append(attr)
    if name is not None and name.strip() and name.strip() != staff.name:
        staff.name = name.strip()[:128]
        changed.append("name")
    elif new and not staff.name:
        staff.name = console or ""
    if language is not None and language != staff.panel_locale:
        staff.panel_locale = language
        changed.append("language")
    db.add(staff)
    db.flush()
    if departments is not None and sorted(set(departments)) != panel.departments_of(db, staff.id):
        panel.set_departments(db, staff.id, departments)
        changed.append("departments")
    if not new and ({"role", "departments"} & set(changed)):
        panel.revoke_sessions(db, staff.id)
    audit(db, actor.who, "staff.added" if new else "staff.changed", f"staff:{staff.id}", role=staff.role,
               departments=panel.departments_of(db, staff.id), changed=changed)
    return staff


def issue_link(db: Session, actor: Actor, staff_id: int, settings) -> tuple[Staff, str]:
    """An admin issues a one-time sign-in link for an active member (to hand over in person or by
    their own channel): the same link as `/panel` in the bot and `katilim staff login-link ID`."""
    check(actor, "staff.manage")
    staff = db.get(Staff, staff_id)
    if staff is None:
        raise StaffError(N_("panel.staff.not_found"), id=staff_id)
    if not staff.active:
        raise StaffError(N_("panel.staff.link_inactive"))
    return staff, issue_login_link(db, settings, staff, via="panel", actor=actor.who)


def set_active(db: Session, actor: Actor, staff_id: int, active: bool) -> Staff:
    """Deactivate (no sign-in, no staff commands; sessions end) or reactivate a staff member."""
    check(actor, "staff.manage")
    staff = db.get(Staff, staff_id)
    if staff is None:
        raise StaffError(N_("panel.staff.not_found"), id=staff_id)
    if staff.active == active:
        return staff
    if not active and staff.id == actor.staff_id:
        raise StaffError(N_("panel.staff.not_yourself"))
    if not active and staff.role == "admin" and not _active_admins(db, besides=staff.id):
        raise StaffError(N_("panel.staff.last_admin"))
    staff.active = active
    db.add(staff)
    if not active:
        panel.revoke_sessions(db, staff.id)
    audit(db, actor.who, "staff.activated" if active else "staff.deactivated", f"staff:{staff.id}")
    return staff


# ---------------------------------------------------------------- one's own account
def set_language(db: Session, actor: Actor, staff: Staff, lang: str) -> None:
    check(actor, "account.own")
    if lang not in PANEL_LOCALES:
        raise StaffError(N_("panel.account.bad_language"))
    if staff.panel_locale != lang:
        staff.panel_locale = lang
        db.add(staff)
        audit(db, actor.who, "panel.language", f"staff:{staff.id}", language=lang)


def totp_secret_for_enrolment(db: Session, actor: Actor, staff: Staff) -> str:
    """The secret being enrolled (a new one, kept until confirmed); refused once TOTP is on."""
    check(actor, "account.own")
    if staff.totp_enabled_at is not None:
        raise StaffError(N_("panel.totp.already"))
    if not staff.totp_secret:
        staff.totp_secret = pyotp.random_base32()
        db.add(staff)
    return staff.totp_secret


def provisioning_uri(staff: Staff, issuer: str = TOTP_ISSUER) -> str:
    return pyotp.TOTP(staff.totp_secret).provisioning_uri(name=staff.name or f"staff-{staff.id}", issuer_name=issuer)


def tries_left(db: Session, staff: Staff, *, now: datetime | None = None) -> int:
    since = (now or utcnow()) - TOTP_TRY_WINDOW
    failed = db.exec(select(func.count()).select_from(AuditLog)
                     .where(AuditLog.action == "panel.totp_failed", AuditLog.target == f"staff:{staff.id}",
                            AuditLog.at >= since)).one()
    return max(0, TOTP_TRIES - failed)


def verify_totp(db: Session, staff: Staff, code: str, *, purpose: str, now: datetime | None = None) -> bool:
    """Check a code (once per time step, TOTP_TRIES per window); a wrong one is audited."""
    now = now or utcnow()
    if not staff.totp_secret or tries_left(db, staff, now=now) == 0:
        audit(db, f"staff:{staff.id}", "panel.totp_failed", f"staff:{staff.id}", purpose=purpose,
                   reason="too_many" if staff.totp_secret else "no_secret")
        return False
    code = "".join(ch for ch in (code or "") if ch.isdigit())
    timecode = None
    if len(code) == 6:
        try:
            timecode = pyotp.TOTP(staff.totp_secret).verify_and_get_timecode(code, for_time=now, valid_window=1)
        except OTPVerificationError:
            pass
    if timecode is None or (staff.totp_last_timecode is not None and timecode <= staff.totp_last_timecode):
        audit(db, f"staff:{staff.id}", "panel.totp_failed", f"staff:{staff.id}", purpose=purpose,
                   reason="wrong" if timecode is None else "replayed")
        return False
    staff.totp_last_timecode = timecode
    db.add(staff)
    return True


def confirm_totp(db: Session, actor: Actor, staff: Staff, code: str, *, now: datetime | None = None) -> bool:
    """Turn TOTP on once a first correct code is given."""
    check(actor, "account.own")
    if staff.totp_enabled_at is not None:
        raise StaffError(N_("panel.totp.already"))
    if not verify_totp(db, staff, code, purpose="enrol", now=now):
        return False
    staff.totp_enabled_at = now or utcnow()
    db.add(staff)
    audit(db, actor.who, "panel.totp_enrolled", f"staff:{staff.id}")
    return True


def disable_totp(db: Session, actor: Actor, staff: Staff, code: str, *, required: bool,
                 now: datetime | None = None) -> bool:
    """Turn TOTP off with a current code; an admin cannot when PANEL_REQUIRE_TOTP is on."""
    check(actor, "account.own")
    if staff.totp_enabled_at is None:
        return True
    if required and staff.role == "admin":
        raise StaffError(N_("panel.totp.required"))
    if not verify_totp(db, staff, code, purpose="disable", now=now):
        return False
    staff.totp_secret, staff.totp_enabled_at, staff.totp_last_timecode = "", None, None
    db.add(staff)
    audit(db, actor.who, "panel.totp_disabled", f"staff:{staff.id}")
    return True


def reset_totp(db: Session, actor: Actor, staff_id: int) -> Staff:
    """An admin turns a member's second factor off (a lost phone); their sessions end, and they
    enrol again at the next sign-in if it is required."""
    check(actor, "staff.manage")
    staff = db.get(Staff, staff_id)
    if staff is None:
        raise StaffError(N_("panel.staff.not_found"), id=staff_id)
    staff.totp_secret, staff.totp_enabled_at, staff.totp_last_timecode = "", None, None
    db.add(staff)
    panel.revoke_sessions(db, staff.id)
    audit(db, actor.who, "panel.totp_reset", f"staff:{staff.id}")
    return staff


def sign_out(db: Session, actor: Actor, staff: Staff, *, session_id: int | None = None,
             all_but: int | None = None) -> int:
    """End one of one's sessions, or all but the current one."""
    check(actor, "account.own")
    ended = panel.revoke_sessions(db, staff.id, only_id=session_id, except_id=all_but)
    audit(db, actor.who, "panel.sessions_ended", f"staff:{staff.id}", count=ended,
               which="others" if all_but is not None else "one")
    return ended


def refusal(db: Session, actor: Actor, refused: Refused, where: str) -> None:
    """Audit a refused action (in a transaction of its own: the refused one rolled back)."""
    audit(db, actor.who, "panel.refused", where, attempted=refused.action, role=actor.role)
