"""Times typed by staff, read in the municipality's time zone.

    25.11.2026 18:00 · 25/11/2026 18:00 · 2026-11-25 18:00 · 25.11 18:00 (this year, or next)
    yarın 09:00 · yarin 9:00 · tomorrow 09:00 · غدا 09:00
    bugün 18:30 · today 18:30 · اليوم 18:30
    18:00 (today, or tomorrow if that time has passed) · 18.00 · saat 18:00

A pure function: `parse_when(text, now, tz)` gives an aware UTC datetime in the future or raises
`WhenError` whose `code` says why ("format", "invalid", "past", "far")."""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from conversations.text import fold

TOMORROW = {"yarin", "tomorrow", "غدا"}
TODAY = {"bugun", "today", "اليوم"}
FILLER = {"saat", "at", "الساعه", "في"}
MAX_AHEAD = timedelta(days=366)
_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "01234567890123456789")


class WhenError(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def parse_when(text: str, now: datetime, tz: str | ZoneInfo = "Europe/Istanbul",
               max_ahead: timedelta = MAX_AHEAD) -> datetime:
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    local_now = now.astimezone(zone)
    typed = text.translate(_DIGITS)
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
        return _check(_at(day, clock, zone), now, max_ahead)
    if len(numbers) == 2:                                       # 18:00 → today, or tomorrow if passed
        clock = _clock(numbers)
        when = _at(local_now.date(), clock, zone)
        if when <= now:
            when = _at(local_now.date() + timedelta(days=1), clock, zone)
        return _check(when, now, max_ahead)
    if len(numbers) == 4:                                       # 25.11 18:00 → this year, or next
        d, m = _int(numbers[0], 2), _int(numbers[1], 2)
        clock = _clock(numbers[2:])
        when = _at(_date(local_now.year, m, d), clock, zone)
        if when <= now:
            when = _at(_date(local_now.year + 1, m, d), clock, zone)
        return _check(when, now, max_ahead)
    if len(numbers) == 5:
        if len(numbers[0]) == 4:                                # 2026-11-25 18:00
            y, m, d = int(numbers[0]), _int(numbers[1], 2), _int(numbers[2], 2)
        elif len(numbers[2]) == 4:                              # 25.11.2026 18:00
            d, m, y = _int(numbers[0], 2), _int(numbers[1], 2), int(numbers[2])
        else:
            raise WhenError("format")
        return _check(_at(_date(y, m, d), _clock(numbers[3:]), zone), now, max_ahead)
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


def _check(when: datetime, now: datetime, max_ahead: timedelta) -> datetime:
    if when <= now:
        raise WhenError("past")
    if when - now > max_ahead:
        raise WhenError("far")
    return when
