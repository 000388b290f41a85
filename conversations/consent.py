"""What withdrawing a consent stops, per purpose, in one place. `Ctx.record_consent` calls
`withdrawn` when a purpose goes from granted to withdrawn (privacy settings, DUR/STOP,
/abonelik); the README's "Privacy" section and the catalogs' `privacy.stops.*` texts say the
same, purpose by purpose:

* reports: no news of any report any more (status changes, "was it solved?"): `storage.reports`
  tells only residents whose consent stands; the reports they follow are no longer followed (the
  supporters count stays); new reports ask again. Their own reports stay with the municipality,
  linked to them so /raporlarim shows them, until /verilerimisil.
* volunteering: they leave every pool (skills, availability, mahalle deleted), their answers to
  calls not started yet go (a place they held goes to the reserve list), call buttons ask for the
  consent again.
* reminders: every pending reminder is dropped now; none is planned without the consent (given
  again, reminders are planned again for what they are registered for: `GRANTS`).
* announcements: broadcasts already queued for them are cancelled; new ones skip them.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from sqlmodel import Session

from conversations import participation as P
from storage import outbox
from storage import reports as rp


def _reports(db: Session, resident_id: int, now: datetime, tz: str) -> None:
    rp.withdraw_consent(db, resident_id)


def _volunteering(db: Session, resident_id: int, now: datetime, tz: str) -> None:
    P.withdraw_volunteering(db, resident_id, now=now, tz=tz)


def _reminders(db: Session, resident_id: int, now: datetime, tz: str) -> None:
    P.withdraw_reminders(db, resident_id)


def _announcements(db: Session, resident_id: int, now: datetime, tz: str) -> None:
    outbox.withdraw_announcements(db, resident_id)


WITHDRAWALS: dict[str, Callable[[Session, int, datetime, str], Any]] = {
    "reports": _reports,
    "volunteering": _volunteering,
    "reminders": _reminders,
    "announcements": _announcements,
}


def withdrawn(db: Session, resident_id: int, purpose: str, *, now: datetime, tz: str = "Europe/Istanbul") -> None:
    """Stop what `purpose` covered for this resident, in the caller's transaction."""
    WITHDRAWALS[purpose](db, resident_id, now, tz)


def _reminders_again(db: Session, resident_id: int, now: datetime, settings: Any) -> None:
    P.enable_reminders_for(db, resident_id, now, P.offsets_of(settings))


# A consent given again after onboarding: what comes back on its own (the rest waits for the
# resident: a pool to join, a report to follow).
GRANTS: dict[str, Callable[[Session, int, datetime, Any], Any]] = {"reminders": _reminders_again}


def granted(db: Session, resident_id: int, purpose: str, *, now: datetime, settings: Any = None) -> None:
    if purpose in GRANTS:
        GRANTS[purpose](db, resident_id, now, settings)
