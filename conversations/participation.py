"""What events and volunteering share: the error their rules raise, the button prefixes of the
notices they send, and the names of event types and availability. The rules themselves:

* conversations/attendance.py: the residents' side of events (RSVP, waiting list, check-in, rating);
* conversations/pools.py: the volunteers' side (pools, being matched to a call, answering it);
* conversations/reminders.py: reminders before both;
* conversations/calendar_files.py: an event's .ics file;
* conversations/audiences.py: broadcast audiences made of pools, calls and events;
* conversations/participation_data.py: the resident's data rights over all of it;
* conversations/domain/events.py, conversations/domain/volunteering.py: the staff operations
  (create, edit, cancel an event; post, cancel a call), called by the chat and the CLI alike.

Every function works inside the caller's transaction; messages to residents go through the
outbox in that same transaction. Places (a call's volunteers, an event's seats) are counters on
the call / event row, taken with one conditional UPDATE after the row is locked
(storage/participation.py): two taps at once, one place → exactly one wins, on SQLite and
PostgreSQL.

Consent (KVKK):
* pools and calls for volunteers need "volunteering" (skills, availability and mahalle are kept
  to match volunteers with calls);
* an RSVP needs no extra consent: keeping the registration is what the resident asked for (the
  seat, the waiting list, news when the event changes); the legal basis is providing the
  requested service, as for any registration desk;
* reminders need "reminders": without it no reminder rows are written, and a reminder whose
  resident withdrew consent since is dropped at send time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conversations.i18n import N_
from conversations.when import DIGITS, WhenError, parse_when
from storage.participation import AVAILABILITY, EVENT_TYPES

# Global button prefixes (the routers' global choices): vc:<call>:<y|n|c|cy|t>,
# ev:<event>:<c|cy>, fb:<event>:<1-5>.
CALL_PREFIX, EVENT_PREFIX, FEEDBACK_PREFIX = "vc", "ev", "fb"

TYPE_KEYS = {"panel": N_("event.type.panel"), "konferans": N_("event.type.konferans"),
             "atolye": N_("event.type.atolye"), "odak_grup": N_("event.type.odak_grup"),
             "sosyo_kulturel": N_("event.type.sosyo_kulturel"), "other": N_("event.type.other")}
AVAILABILITY_KEYS = {"weekdays": N_("volunteer.avail.weekdays"), "weekends": N_("volunteer.avail.weekends"),
                     "evenings": N_("volunteer.avail.evenings")}
assert set(TYPE_KEYS) == set(EVENT_TYPES) and set(AVAILABILITY_KEYS) == set(AVAILABILITY)


@dataclass(frozen=True)
class Ended:
    """What ending something did (cancelling an event, closing or cancelling a call): the residents
    told; `already` (and 0 told) when it had ended before."""

    id: int
    told: int
    already: bool = False


class ParticipationError(ValueError):
    """An operation that cannot be done; `key` is a catalog key for the resident or staff."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def read_time(text: str, tz: str, *, now: datetime, base: datetime | None = None, future: bool = True) -> datetime:
    """A time typed by staff for an event or a call, read by the one parser (conversations/when.py:
    "28.11.2026 14:00", "yarın 18:00", "16:00" on the day of `base`), with no limit ahead (events
    are planned years ahead). ParticipationError "event.in_past" or "event.bad_datetime"."""
    try:
        return parse_when(text, now, tz, max_ahead=None, base=base, future=future)
    except WhenError as exc:
        raise ParticipationError(N_("event.in_past") if exc.code == "past" else N_("event.bad_datetime")) from None


def read_count(text: str, *, limit: int = 10_000) -> int | None:
    """A number of places or volunteers typed by staff: 1..limit ("event.bad_number" says so), else None."""
    text = text.strip().translate(DIGITS)
    if re.fullmatch(r"\d{1,3}([.,]\d{3})+", text):  # "10.000", "1,500": thousands written out
        text = re.sub(r"[.,]", "", text)
    return int(text) if re.fullmatch(r"[0-9]+", text) and 1 <= int(text) <= limit else None
