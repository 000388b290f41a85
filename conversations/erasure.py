"""Erasure (`/verilerimisil`): every feature's eraser, then the resident's profile, identities,
conversation, queued messages and outbox rows, in the step's transaction (README "Privacy").
The engine (conversations/runtime.py) calls it when a step asks for erasure."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlmodel import Session

from storage import attachments, inbox, outbox
from storage.attachments import Erased, names_in, suffix_of
from storage.audit import audit
from storage.models import ConversationSession
from storage.residents import erase_core, identities_of

if TYPE_CHECKING:
    from conversations.step import EngineConfig


def erase_resident(db: Session, resident_id: int, actor: str, config: "EngineConfig") -> Erased:
    """Delete a resident's personal data in this transaction; records the municipality must keep
    stay, anonymised (README "Privacy"). Every feature's eraser runs (the routers'), then the profile,
    identities, conversation, queued messages and outbox rows go, and the messages to others that
    quoted them. Returns what is left to do after the commit: the files to delete (their stored
    files that nothing else points at, with every copy under MEDIA_DIR), the documents channels
    wrote for them, the addresses they were reached on."""
    erased = Erased()
    erased.addresses = {(i.channel, i.address) for i in identities_of(db, resident_id)}
    erased.documents = outbox.documents_of(db, resident_id)
    erased.files |= {d["sha256"] + suffix_of(d["name"]) for d in erased.documents}  # channels' published copies
    session = db.get(ConversationSession, resident_id)
    if session is not None:
        erased.files |= names_in(session.data or {})   # a draft's photos
    inbox.erase_from(db, erased.addresses)
    for eraser in config.registry.erasers:
        erased.add(eraser(db, resident_id, config))
    erase_core(db, resident_id)
    outbox.erase_resident(db, resident_id)
    db.flush()
    still_used = attachments.referenced(db, erased.files, messages=False)  # another report, a draft, a broadcast
    erased.files -= still_used
    outbox.forget_quotes(db, erased.words, {attachments.stored_name(f) for f in erased.files})
    audit(db, actor, "resident.erased", f"resident:{resident_id}")
    return erased
