"""Times typed by staff, read in the municipality's time zone.

    25.11.2026 18:00 · 25/11/2026 18:00 · 2026-11-25 18:00 · 25.11 18:00 (this year, or next)
    yarın 09:00 · yarin 9:00 · tomorrow 09:00 · غدا 09:00
    bugün 18:30 · today 18:30 · اليوم 18:30
    18:00 (today, or tomorrow if that time has passed) · 18.00 · saat 18:00

One parser for every front end that reads a time (broadcasts, events, calls for volunteers, the
CLI): `parse_when(text, now, tz)` gives an aware UTC datetime in the future or raises `WhenError`
whose `code` says why ("format", "invalid", "past", "far"). With `base` (an event's start), a bare
"16:00" is that day; `future=False` reads a time whatever it is (an edit typed at the CLI);
`max_ahead=None` sets no limit (events are planned years ahead).

And the other way, for residents: `span_text` writes an event's or a call's span in their language.
`example_time` is a time a day or two ahead, written as it may be typed (the prompts' example)."""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from babel.dates import format_datetime

from conversations.i18n import format_when
from conversations.text import fold
from storage.db import aware

TOMORROW = {"yarin", "tomorrow", "غدا"}
TODAY = {"bugun", "today", "اليوم"}
FILLER = {"saat", "at", "الساعه", "في"}
MAX_AHEAD = timedelta(days=366)
# Arabic-Indic and Persian digits as ASCII (a number typed on an Arabic keyboard)
DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")


class WhenError(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def parse_when(text: str, now: datetime, tz: str | ZoneInfo = "Europe/Istanbul",
               max_ahead: timedelta | None = MAX_AHEAD, *, base: datetime | None = None,
               future: bool = True) -> datetime:
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    now = aware(now)
    local_now = now.astimezone(zone)
    check = max_ahead, future
    typed = text.translate(DIGITS)
    typed = re.sub(r"(\d)[tT](\d)", r"\1 \2", typed)          # 2026-11-25T18:00
    tokens = fold(typed).replace("/", " ").split()
    day_word = None
    numbers: list[str] = []
    for token in tokens:
        if token in TOMORROW or token in TODAY:
            if day_word is not None:
                raise WhenError("format")
            day_word = "tomorrow" if token in TOMORROW else "today"
        elif token in FILLER:
            continue
        elif token.isdigit():
            numbers.append(token)
        else:
            raise WhenError("format")
    if day_word is not None:
        if len(numbers) not in (1, 2):
            raise WhenError("format")
        clock = _clock(numbers)
        day = local_now.date() + timedelta(days=1 if day_word == "tomorrow" else 0)
        return _check(_at(day, clock, zone), now, *check)
    if len(numbers) == 2 and base is not None:                  # 16:00 → the day of `base`
        return _check(_at(aware(base).astimezone(zone).date(), _clock(numbers), zone), now, *check)
    if len(numbers) == 2:                                       # 18:00 → today, or tomorrow if passed
        clock = _clock(numbers)
        when = _at(local_now.date(), clock, zone)
        if when <= now:
            when = _at(local_now.date() + timedelta(days=1), clock, zone)
        return _check(when, now, *check)
    if len(numbers) == 4:                                       # 25.11 18:00 → this year, or next
        d, m = _int(numbers[0], 2), _int(numbers[1], 2)
        clock = _clock(numbers[2:])
        when = _at(_date(local_now.year, m, d), clock, zone)
        if when <= now:
            when = _at(_date(local_now.year + 1, m, d), clock, zone)
        return _check(when, now, *check)
    if len(numbers) == 5:
        if len(numbers[0]) == 4:                                # 2026-11-25 18:00
            y, m, d = int(numbers[0]), _int(numbers[1], 2), _int(numbers[2], 2)
        elif len(numbers[2]) == 4:                              # 25.11.2026 18:00
            d, m, y = _int(numbers[0], 2), _int(numbers[1], 2), int(numbers[2])
        else:
            raise WhenError("format")
        return _check(_at(_date(y, m, d), _clock(numbers[3:]), zone), now, *check)
    raise WhenError("format")


def _int(token: str, width: int) -> int:
    if not 1 <= len(token) <= width:
        raise WhenError("format")
    return int(token)


def _clock(numbers: list[str]) -> time:
    hour = _int(numbers[0], 2)
    minute = 0
    if len(numbers) == 2:
        if len(numbers[1]) != 2:
            raise WhenError("format")
        minute = int(numbers[1])
    if hour > 23 or minute > 59:
        raise WhenError("invalid")
    return time(hour, minute)


def _date(y: int, m: int, d: int) -> date:
    try:
        return date(y, m, d)
    except ValueError:
        raise WhenError("invalid") from None


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone).astimezone(timezone.utc)


def _check(when: datetime, now: datetime, max_ahead: timedelta | None, future: bool) -> datetime:
    if future and when <= now:
        raise WhenError("past")
    if max_ahead is not None and when - now > max_ahead:
        raise WhenError("far")
    return when


def example_time(now: datetime, lang: str, tz: str | ZoneInfo = "Europe/Istanbul", *, days: int = 2,
                 hour: int = 14) -> str:
    """A time `days` ahead at `hour`:00 local, written in the resident's language in the form
    staff type ("04.12.2026 14:00"): the example in a prompt is always in the future."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    day = aware(now).astimezone(zone).date() + timedelta(days=days)
    return format_datetime(datetime.combine(day, time(hour, 0), tzinfo=zone), "dd.MM.yyyy HH:mm", tzinfo=zone,
                           locale=lang)


@lru_cache(maxsize=1024)  # a reminder scan or a broadcast formats the same event for many residents
def span_text(start: datetime, end: datetime, lang: str, tz: str) -> str:
    """'28 Kasım 2026 Cumartesi 14:00–16:00', or both dates in full when the end is another day."""
    zone = ZoneInfo(tz)
    if start.astimezone(zone).date() == end.astimezone(zone).date():
        return f"{format_when(start, lang, tz)}–{end.astimezone(zone):%H:%M}"
    return f"{format_when(start, lang, tz)} – {format_when(end, lang, tz)}"
