"""Broadcast audiences made of volunteering and events: staff broadcasts (storage/broadcasts.py)
can target volunteer pools, a call's volunteers, an event's attendees or its waiting list.
bot/features.py adds these filters (register_audiences) with the participation feature."""
from __future__ import annotations

from storage.participation import CallResponse, PoolMembership, Rsvp


def register_audiences() -> None:
    """Staff broadcasts (storage/broadcasts.py) can target volunteer pools, a call's volunteers,
    an event's attendees or its waiting list: {"pools": ["environment"]}, {"volunteer_call": 3},
    {"event_attendees": 12}, {"event_waitlist": 12}."""
    try:
        from storage.broadcasts import AUDIENCE_FILTERS, BroadcastError, R, audience_filter
    except ImportError:  # pragma: no cover - broadcasts not installed
        return
    from sqlalchemy import exists

    members, responses, rsvps = PoolMembership.__table__, CallResponse.__table__, Rsvp.__table__

    def _ids(value, name):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BroadcastError(f"{name} must be a number")
        return value

    if "pools" not in AUDIENCE_FILTERS:
        @audience_filter("pools")
        def _pools(keys):
            if not keys:
                return None
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise BroadcastError("pools must be a list of pool keys")
            return exists().where(members.c.resident_id == R.c.id, members.c.pool.in_(list(keys)))

    if "volunteer_call" not in AUDIENCE_FILTERS:
        @audience_filter("volunteer_call")
        def _call(call_id):
            return exists().where(responses.c.resident_id == R.c.id,
                                  responses.c.call_id == _ids(call_id, "volunteer_call"),
                                  responses.c.status == "accepted")

    if "event_attendees" not in AUDIENCE_FILTERS:
        @audience_filter("event_attendees")
        def _attendees(event_id):
            return exists().where(rsvps.c.resident_id == R.c.id, rsvps.c.event_id == _ids(event_id, "event_attendees"),
                                  rsvps.c.status == "going")

    if "event_waitlist" not in AUDIENCE_FILTERS:
        @audience_filter("event_waitlist")
        def _waitlist(event_id):
            return exists().where(rsvps.c.resident_id == R.c.id, rsvps.c.event_id == _ids(event_id, "event_waitlist"),
                                  rsvps.c.status == "waitlist")


