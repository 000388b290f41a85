"""Who sent which stored file, and what points at one: the bookkeeping that lets erasure delete a
resident's files and lets housekeeping delete files nothing needs any more.

Files in MEDIA_DIR are content-addressed (`<sha256 of the bytes><extension>`, storage/media.py),
and so are the copies a channel publishes from a subfolder (WhatsApp's `whatsapp-out/`): one name
means the same bytes wherever it is. `MediaUpload` records which resident sent which stored file
(written by the conversation step that received it): a photo of a draft abandoned at /iptal, or
one sent where none was asked for, is still known to be theirs.

A stored file is *referenced* while a row needs it: a report's attachment (`report_media.path`), a
broadcast's photo (`broadcast.photo_path`), a conversation in progress (`conversation_session.data`
holds the paths of a draft's photos) or a message waiting to go (`outbox.payload`). `references()`
lists them; a feature that keeps paths to stored files elsewhere adds its column there.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Optional

from sqlalchemy import Text, UniqueConstraint, cast, delete, or_
from sqlmodel import Field, Session, SQLModel, select

from storage.db import json_text, utcnow

log = logging.getLogger(__name__)

STORED_NAME = re.compile(r"[0-9a-f]{64}(?:\.[A-Za-z0-9]{1,8})?")
ORPHAN_AGE = timedelta(days=1)     # housekeeping leaves younger files alone (an upload in progress)
SWEEP_LIMIT = 1000                 # files deleted per housekeeping run at most


class MediaUpload(SQLModel, table=True):
    """A stored file a resident sent (a photo, a voice note, a document), by its stored name."""

    __tablename__ = "media_upload"
    __table_args__ = (UniqueConstraint("resident_id", "name", name="uq_media_upload_resident_name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    resident_id: int = Field(foreign_key="resident.id", index=True)
    name: str = Field(max_length=80, index=True)
    created_at: datetime = Field(default_factory=utcnow)


@dataclass
class Erased:
    """What erasing a resident leaves to do once its transaction has committed, and what messages
    to others may quote: `files` are stored names (or paths) of theirs, deleted with every copy
    under MEDIA_DIR unless something else still points at them; `words` are texts they wrote;
    `documents` the files the channels wrote for them ({"name", "sha256"}: the terminal's export);
    `addresses` the (channel, address) pairs they were reached on."""

    files: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    documents: list[dict[str, str]] = field(default_factory=list)
    addresses: set[tuple[str, str]] = field(default_factory=set)

    def add(self, other: "Erased | None") -> None:
        if other is not None:
            self.files |= other.files
            self.words |= other.words
            self.documents += [d for d in other.documents if d not in self.documents]
            self.addresses |= other.addresses


def stored_name(path: str | Path | None) -> str:
    """The stored file name of a path ("" when it is not a content-addressed name)."""
    name = Path(str(path or "")).name
    return name if STORED_NAME.fullmatch(name) else ""


def suffix_of(filename: str) -> str:
    """The extension a stored copy of a file named `filename` gets ("" when it is not a plain one)."""
    suffix = Path(filename or "").suffix
    return suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""


def names_in(value: Any) -> set[str]:
    """Every stored file name that a JSON value (a session's data, a message) mentions."""
    text = value if isinstance(value, str) else json_text(value)
    return {m.group(0) for m in STORED_NAME.finditer(text)
            if m.group(0) == stored_name(m.group(0))}


# ---------------------------------------------------------------- uploads
def record_uploads(db: Session, resident_id: int, refs: Iterable[str], now: datetime | None = None) -> None:
    """Note the stored files a resident just sent (a conversation step with media)."""
    for name in {stored_name(ref) for ref in refs} - {""}:
        exists = db.exec(select(MediaUpload.id).where(MediaUpload.resident_id == resident_id,
                                                      MediaUpload.name == name)).first()
        if exists is None:
            db.add(MediaUpload(resident_id=resident_id, name=name, created_at=now or utcnow()))


def uploads_of(db: Session, resident_id: int) -> list[MediaUpload]:
    return list(db.exec(select(MediaUpload).where(MediaUpload.resident_id == resident_id).order_by(MediaUpload.id)))


def export_resident(db: Session, resident_id: int) -> dict[str, Any]:
    return {"attachments": [{"name": u.name, "received_at": _iso(u.created_at)} for u in uploads_of(db, resident_id)]}


def erase_uploads(db: Session, resident_id: int) -> Erased:
    rows = uploads_of(db, resident_id)
    db.exec(delete(MediaUpload).where(MediaUpload.resident_id == resident_id))
    return Erased(files={u.name for u in rows})


# ---------------------------------------------------------------- references
def references():
    """(column, condition on its row, whether it holds JSON to search rather than one path)."""
    from storage.models import Broadcast, ConversationSession, OutboxMessage
    from storage.reports import ReportMedia

    # a broadcast's rows carry its photo, which broadcast.photo_path already names
    waiting = OutboxMessage.status.in_(("pending", "sending")) & OutboxMessage.broadcast_id.is_(None)
    return [(ReportMedia.path, None, False), (ReportMedia.blurred_path, ReportMedia.blurred_path != "", False),
            (Broadcast.photo_path, Broadcast.photo_path != "", False),
            (ConversationSession.data, None, True), (OutboxMessage.payload, waiting, True)]


def referenced(db: Session, files: Iterable[str] | None = None, *, media_dir: Path | str | None = None,
               messages: bool = True) -> set[str]:
    """Which of `files` (stored names, or paths outside the store such as a terminal user's own
    file) rows still point at (see the module docstring); with no `files`, every stored name rows
    point at (housekeeping: JSON columns are searched only where they mention the name of
    `media_dir`, the folder every stored path is in). `messages=False`: a waiting message does
    not count (erasure deletes the messages to others that show the erased resident's files)."""
    from storage.models import OutboxMessage

    wanted = None if files is None else {f for f in files if f}
    if wanted is not None and not wanted:
        return set()
    keys = None if wanted is None else {stored_name(f) or f for f in wanted}
    found: set[str] = set()
    for column, condition, is_json in references():
        if not messages and column is OutboxMessage.payload:
            continue
        searched = cast(column, Text) if is_json else column
        query = select(column)
        if condition is not None:
            query = query.where(condition)
        if keys is not None:
            query = query.where(or_(*[searched.contains(k, autoescape=True) for k in sorted(keys)]))
        elif is_json:  # the folder's own name: in every stored path, relative or absolute
            query = query.where(searched.contains(Path(media_dir or ".").resolve().name, autoescape=True))
        for value in db.exec(query.execution_options(yield_per=1000)):
            if is_json:
                text = json_text(value)
                found |= names_in(text) | ({k for k in keys if k in text} if keys else set())
            else:
                found |= {stored_name(value) or str(value)} - {""}
    if wanted is None:
        return found
    return {f for f in wanted if (stored_name(f) or f) in found}


# ---------------------------------------------------------------- deleting files
def copies(media_dir: Path | str, name: str) -> list[Path]:
    """Every place a stored name can be under MEDIA_DIR: the store itself and its subfolders
    (a channel's published copies)."""
    root = Path(media_dir)
    places = [root / name]
    try:
        places += [entry / name for entry in root.iterdir() if entry.is_dir()]
    except OSError:
        pass
    return places


def remove(files: Iterable[str], media_dir: Path | str | None) -> int:
    """Delete stored files after the transaction that released them committed: the path itself
    and every copy of its name under MEDIA_DIR. Returns the files removed."""
    removed = 0
    for item in files:
        places = [Path(item)] if os.sep in item or "/" in item else []
        name = stored_name(item)
        if media_dir is not None and name:
            places += copies(media_dir, name)
        for path in places:
            try:
                if path.is_file():
                    path.unlink()
                    removed += 1
            except OSError as exc:
                log.warning("stored file %s not removed: %s", path.name, exc)
    return removed


def sweep(db: Session, media_dir: Path | str, *, older_than: timedelta = ORPHAN_AGE,
          limit: int = SWEEP_LIMIT) -> int:
    """Housekeeping: delete stored files at the top of MEDIA_DIR older than `older_than` that no
    row points at (a draft's photos after /iptal, a photo sent where none was asked for), at most
    `limit` per run, with their upload records. Only content-addressed names are considered."""
    root = Path(media_dir)
    if not root.is_dir():
        return 0
    horizon = time.time() - older_than.total_seconds()
    candidates: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                if entry.is_file() and STORED_NAME.fullmatch(entry.name) and entry.stat().st_mtime < horizon:
                    candidates.append(entry.name)
            except OSError:
                continue
    if not candidates:
        return 0
    keep = referenced(db, media_dir=root)
    removed = 0
    for name in candidates:
        if name in keep:
            continue
        try:
            (root / name).unlink()
        except OSError:
            continue
        db.exec(delete(MediaUpload).where(MediaUpload.name == name))
        removed += 1
        if removed >= limit:
            break
    return removed


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    from datetime import timezone

    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()
