"""An event's calendar file (.ics, RFC 5545): one VEVENT, its UID stable per event, times in
UTC, SEQUENCE bumped at each change, METHOD:CANCEL when the event is called off. Sent with a
registration, a promotion from the waiting list and a change of time or place."""
from __future__ import annotations

from datetime import datetime, timezone

from conversations.messages import Attachment
from storage.db import aware, utcnow
from storage.participation import Event


def ics_escape(text: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon, comma escaped; newlines as \\n."""
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n"))


def _fold_line(line: str) -> list[str]:
    """Lines longer than 75 octets are folded (CRLF + space), never inside a UTF-8 character."""
    out, current = [], ""
    for char in line:
        limit = 75 if not out else 74
        if len((current + char).encode("utf-8")) > limit:
            out.append(current)
            current = char
        else:
            current += char
    out.append(current)
    return [out[0]] + [" " + part for part in out[1:]]


def _ics_time(dt: datetime) -> str:
    return aware(dt).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def event_ics(event: Event, lang: str, *, domain: str = "katilim", now: datetime | None = None,
              cancelled: bool = False) -> str:
    """A calendar file with one VEVENT (UID stable per event, times in UTC, SEQUENCE bumped at each change)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//Katilim//Katilim participation chatbot//TR",
             "CALSCALE:GREGORIAN", f"METHOD:{'CANCEL' if cancelled else 'PUBLISH'}", "BEGIN:VEVENT",
             f"UID:event-{event.id}@{domain}", f"DTSTAMP:{_ics_time(now or utcnow())}",
             f"DTSTART:{_ics_time(event.starts_at)}", f"DTEND:{_ics_time(event.ends_at)}",
             f"SEQUENCE:{event.sequence}", f"SUMMARY:{ics_escape(event.title_in(lang))}"]
    if event.place:
        lines.append(f"LOCATION:{ics_escape(event.place)}")
    if event.latitude is not None and event.longitude is not None:
        lines.append(f"GEO:{event.latitude:.6f};{event.longitude:.6f}")
    description = event.description_in(lang)
    if description:
        lines.append(f"DESCRIPTION:{ics_escape(description)}")
    lines += [f"STATUS:{'CANCELLED' if cancelled or event.status == 'cancelled' else 'CONFIRMED'}",
              "END:VEVENT", "END:VCALENDAR"]
    return "".join(part + "\r\n" for line in lines for part in _fold_line(line))


def ics_attachment(event: Event, lang: str, domain: str = "katilim") -> Attachment:
    return Attachment(f"etkinlik-{event.id}.ics", "text/calendar", event_ics(event, lang, domain=domain))
