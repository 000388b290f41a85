"""A typed number as the answer to the latest proactive message, whatever the channel.

A proactive message (a status change's "was it solved?" `rs:yes:CODE`, a call for volunteers)
carries choices whose keys are global (a prefix with a global-choice handler), answered in
whatever state the resident is. Where a channel shows choices as a numbered list with no buttons
to say which message a number answers (WhatsApp), a number typed right after such a message
answers it: the latest message sent to that address decides. A number after a state's own
question stays the engine's business (it resolves it to that question), and so does anything
else typed.

A typed yes or no ("Evet", "hayır", "yes", "لا": the catalogs' words.yes / words.no, in every
language) answers it too, when exactly one of its global choices means that (a key with a part
`yes`/`y`, `no`/`n`: "was it solved?" `rs:yes:CODE`, a volunteer call `vc:12:y`).

A channel turns this on by declaring `numbers_answer_proactive = True` (handlers/whatsapp.py,
handlers/console.py); bot/app.py App.handle applies it to the channel's messages before the step.
"""
from __future__ import annotations

import re
from typing import Container

from sqlmodel import Session, select

from conversations.i18n import N_
from conversations.messages import Choice, Inbound, Kind
from conversations.step import typed_words
from conversations.text import fold
from storage.models import OutboxMessage

_NUMBER = re.compile(r"\d{1,2}")
YES_WORDS, NO_WORDS = N_("words.yes"), N_("words.no")
MEANING = {"yes": ("yes", "y"), "no": ("no", "n")}   # a part of a choice's key after its prefix


def _meaning(text: str) -> str | None:
    """'yes' or 'no' when the text is one of those words in any language, else None."""
    if len(text) > 20:
        return None
    typed = fold(text)
    for meaning, key in (("yes", YES_WORDS), ("no", NO_WORDS)):
        if typed in typed_words(key):
            return meaning
    return None


def answer_by_number(db: Session, msg: Inbound, global_prefixes: Container[str]) -> bool:
    """Turn `msg`, a typed number, into the choice it picks on the latest message sent to its
    address, when that choice is global (its key's prefix is in `global_prefixes`). True when
    `msg` became that choice."""
    text = msg.text.strip()
    if msg.kind != Kind.TEXT:
        return False
    meaning = None if _NUMBER.fullmatch(text) else _meaning(text)
    if meaning is None and not _NUMBER.fullmatch(text):
        return False
    row = db.exec(select(OutboxMessage).where(
        OutboxMessage.channel == msg.channel, OutboxMessage.address == msg.address,
        OutboxMessage.status == "sent").order_by(OutboxMessage.sent_at.desc(), OutboxMessage.id.desc())
        .limit(1)).first()
    if row is None:
        return False
    choices = [Choice(**c) for c in (row.payload or {}).get("choices", [])]
    if meaning is not None:
        meant = [c for c in choices if set(c.key.split(":")[1:]) & set(MEANING[meaning])]
        if len(meant) != 1:
            return False
        index = choices.index(meant[0])
    else:
        index = int(text) - 1
    if not (0 <= index < len(choices) and choices[index].key.split(":", 1)[0] in global_prefixes):
        return False
    msg.kind = Kind.CHOICE
    msg.choice = choices[index].key
    return True
