"""Consent records: every grant and withdrawal is a row; the latest per purpose is the one that stands."""
from __future__ import annotations

from sqlalchemy import bindparam
from sqlalchemy.engine import Connection
from sqlmodel import Session, select

from storage.db import one_of, utcnow
from storage.fastsql import Prepared, connection_of
from storage.models import CONSENT_PURPOSES, ConsentRecord


def current_consents(db: Session | Connection, resident_id: int) -> dict[str, bool]:
    state = {p: False for p in CONSENT_PURPOSES}
    rows, _ = _CONSENTS_OF.execute(connection_of(db), {"rid": resident_id})
    for purpose, granted in rows:  # the latest record wins
        state[purpose] = bool(granted)
    return state


_CONSENTS_OF = Prepared(select(ConsentRecord.purpose, ConsentRecord.granted)
                        .where(ConsentRecord.resident_id == bindparam("rid")).order_by(ConsentRecord.id))


def current_consents_many(db: Session, resident_ids) -> dict[int, dict[str, bool]]:
    """current_consents for many residents in one query."""
    ids = list(resident_ids)
    state = {rid: {p: False for p in CONSENT_PURPOSES} for rid in ids}
    if ids:
        for resident_id, purpose, granted in db.execute(
                select(ConsentRecord.resident_id, ConsentRecord.purpose, ConsentRecord.granted)
                .where(one_of(db, ConsentRecord.resident_id, ids)).order_by(ConsentRecord.id)):
            state[resident_id][purpose] = granted
    return state


def record_consent(db: Session, resident_id: int, purpose: str, granted: bool, notice_version: str,
                   channel: str = "") -> None:
    if purpose not in CONSENT_PURPOSES:
        raise ValueError(f"unknown consent purpose {purpose}")
    db.add(ConsentRecord(resident_id=resident_id, purpose=purpose, granted=granted,
                         notice_version=notice_version, channel=channel, recorded_at=utcnow()))
