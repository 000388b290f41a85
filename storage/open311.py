"""Open311Request keeps, per report created through the Open311 API (handlers/open311.py), the key that
created it and the `media_url` the client sent (a link to the client's own copy of the photo: it
is not downloaded, so the API cannot be used to make this server fetch arbitrary URLs)."""
from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, Session, SQLModel, select

from storage.apikeys import ApiKey
from storage.db import utcnow


class Open311Request(SQLModel, table=True):
    """A report created through Open311: which key created it, and the client's media_url."""

    __tablename__ = "open311_request"
    report_id: int = Field(foreign_key="report.id", primary_key=True)
    api_key_id: int = Field(foreign_key="api_key.id", index=True)
    media_url: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow)


def record_request(db: Session, report_id: int, key: ApiKey, media_url: str = "") -> Open311Request:
    row = Open311Request(report_id=report_id, api_key_id=key.id, media_url=(media_url or "")[:1000])
    db.add(row)
    db.flush()
    return row


def requests_for(db: Session, report_ids: list[int]) -> dict[int, Open311Request]:
    if not report_ids:
        return {}
    rows = db.exec(select(Open311Request).where(Open311Request.report_id.in_(report_ids)))
    return {row.report_id: row for row in rows}
