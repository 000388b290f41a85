"""Working time: response-time targets counted in a municipality's working hours (pure; no I/O).

A target such as "24 working hours" runs only while the municipality works: the catalog's days
and hours (`[municipality.working_hours]`), never on Turkish public holidays (the `holidays`
package: 1 January, 23 April, 1 May, 19 May, 15 July, 30 August, 29 October, Ramazan Bayramı
(3 days) and Kurban Bayramı (4 days)), only until `half_day_end` on the half days the package
lists (the arife of both bayrams and 28 October, from 13:00), and never on the catalog's
`extra_closed_days` (administrative leave announced by the government, "idari izin", which the
package does not know). Bayram dates are the Diyanet's table up to 2032 (the package's confirmed
range) and the package's estimates after ("tahmini"); announced changes go in extra_closed_days.

Instants are aware datetimes (UTC in the database); the arithmetic happens in the municipality's
time zone (Europe/Istanbul has had no daylight saving time since 2016, but zoneinfo handles any).
In calendar mode (a category with `sla_calendar = true`) an hour is an hour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from storage.db import aware

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Bound on the days walked to find working time (a calendar with no working day at all).
MAX_DAYS = 3 * 366


@dataclass(frozen=True)
class WorkingHours:
    """The catalog's `[municipality.working_hours]`; the defaults are a Turkish public office's."""

    days: frozenset[int] = frozenset(range(5))  # Monday 0 .. Sunday 6
    hours: tuple[tuple[time, time], ...] = ((time(8, 30), time(12, 30)), (time(13, 30), time(17, 30)))
    half_day_end: time = time(13, 0)
    extra_closed_days: frozenset[date] = field(default_factory=frozenset)

    @property
    def hours_per_day(self) -> float:
        """Working hours in a full working day (8 with the defaults)."""
        return sum(_seconds(b) - _seconds(a) for a, b in self.hours) / 3600


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


@lru_cache(maxsize=4)
def _turkey(category: str):
    """Turkish holidays of one category ("public" or "half_day"), years filled in as asked.
    Imported at first use: the package takes some 70 ms to import, and every CLI command loads
    the catalog."""
    import holidays

    return holidays.country_holidays("TR", categories=(category,), language="tr")


def closed_day(day: date, hours: WorkingHours) -> str | None:
    """Why a day has no working time at all ("weekend", "holiday: <name>", "closed"), or None."""
    if day in hours.extra_closed_days:
        return "closed"
    public = _turkey("public").get(day)
    if public:
        return f"holiday: {public}"
    if day.weekday() not in hours.days:
        return "weekend"
    return None


def is_half_day(day: date) -> bool:
    return day in _turkey("half_day")


def intervals_on(day: date, hours: WorkingHours, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The working intervals of a local day as aware datetimes (empty on a closed day)."""
    if closed_day(day, hours):
        return []
    end_of_day = hours.half_day_end if is_half_day(day) else None
    found = []
    for start, end in hours.hours:
        if end_of_day is not None:
            if start >= end_of_day:
                continue
            end = min(end, end_of_day)
        found.append((datetime.combine(day, start, tz), datetime.combine(day, end, tz)))
    return found


def add_working_hours(start: datetime, hours: float, calendar: WorkingHours, tz: str | ZoneInfo = "Europe/Istanbul"
                      ) -> datetime:
    """The instant (UTC) when `hours` working hours have passed since `start`. An instant outside
    working time counts from the next working moment; 0 hours gives that moment."""
    if hours < 0:
        raise ValueError("hours must not be negative")
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    cursor = aware(start).astimezone(zone)
    left = timedelta(hours=hours)
    day = cursor.date()
    for _ in range(MAX_DAYS):
        for a, b in intervals_on(day, calendar, zone):
            if b <= cursor:
                continue
            a = max(a, cursor)
            if b - a >= left:
                return (a + left).astimezone(timezone.utc)
            left -= b - a
        day += timedelta(days=1)
    raise ValueError(f"no working time within {MAX_DAYS} days of {start.isoformat()}")


def working_hours_between(start: datetime, end: datetime, calendar: WorkingHours,
                          tz: str | ZoneInfo = "Europe/Istanbul") -> float:
    """Working hours elapsed from `start` to `end` (negative when end is earlier)."""
    start, end = aware(start), aware(end)
    if end < start:
        return -working_hours_between(end, start, calendar, tz)
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    total = timedelta(0)
    day, last = start.astimezone(zone).date(), end.astimezone(zone).date()
    while day <= last:
        for a, b in intervals_on(day, calendar, zone):
            a, b = max(a, start), min(b, end)
            if b > a:
                total += b - a
        day += timedelta(days=1)
    return total.total_seconds() / 3600


def is_working_time(instant: datetime, calendar: WorkingHours, tz: str | ZoneInfo = "Europe/Istanbul") -> bool:
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    local = aware(instant).astimezone(zone)
    return any(a <= local < b for a, b in intervals_on(local.date(), calendar, zone))


def due_at(created: datetime, sla_hours: float, calendar: WorkingHours, *, calendar_hours: bool = False,
           tz: str | ZoneInfo = "Europe/Istanbul") -> datetime:
    """When a target of `sla_hours` started at `created` runs out: working hours by default,
    calendar hours when the category says so (`sla_calendar = true`)."""
    if calendar_hours:
        return aware(created).astimezone(timezone.utc) + timedelta(hours=sla_hours)
    return add_working_hours(created, sla_hours, calendar, tz)


def elapsed_hours(start: datetime, end: datetime, calendar: WorkingHours, *, calendar_hours: bool = False,
                  tz: str | ZoneInfo = "Europe/Istanbul") -> float:
    """The hours of a target used between two instants, counted as `due_at` counts them."""
    if calendar_hours:
        return (aware(end) - aware(start)).total_seconds() / 3600
    return working_hours_between(start, end, calendar, tz)
