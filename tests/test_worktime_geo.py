"""Working-time arithmetic (conversations/worktime.py) around Turkish holidays, and where a pin is
(conversations/geo.py) against the Buca sample's geometry."""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bot.catalog import load_catalog
from bot.settings import SAMPLE_CATALOG
from conversations import geo
from conversations.worktime import (
    WorkingHours,
    add_working_hours,
    closed_day,
    due_at,
    elapsed_hours,
    intervals_on,
    is_working_time,
    working_hours_between,
)

IST = ZoneInfo("Europe/Istanbul")
HOURS = load_catalog(SAMPLE_CATALOG).municipality.working_hours


def local(*args) -> datetime:
    return datetime(*args, tzinfo=IST)


def plus(start: datetime, hours: float, calendar: WorkingHours = HOURS) -> datetime:
    return add_working_hours(start, hours, calendar).astimezone(IST)


# ---------------------------------------------------------------- working time
def test_ramazan_bayrami_2026_with_its_arife_half_day():
    # Wed 16:00-17:30 (1.5 h), Thu 19 March is arife: 08:30-12:30 only (4 h), Fri-Sun bayram, Mon from 08:30
    assert plus(local(2026, 3, 18, 16, 0), 8) == local(2026, 3, 23, 11, 0)
    assert working_hours_between(local(2026, 3, 18, 16, 0), local(2026, 3, 23, 11, 0), HOURS) == 8
    assert intervals_on(date(2026, 3, 19), HOURS, IST) == [(local(2026, 3, 19, 8, 30), local(2026, 3, 19, 12, 30))]
    assert closed_day(date(2026, 3, 20), HOURS).startswith("holiday: Ramazan Bayramı")


def test_kurban_bayrami_2027_overlapping_19_may():
    # arife Sat 15 May; bayram Sun 16 - Wed 19 May (19 May is also Atatürk'ü Anma): Fri 15:00 + 8 h
    assert plus(local(2027, 5, 14, 15, 0), 8) == local(2027, 5, 20, 15, 0)
    for day in (16, 17, 18, 19):
        assert closed_day(date(2027, 5, day), HOURS).startswith("holiday:"), day
    assert "Kurban Bayramı" in closed_day(date(2027, 5, 19), HOURS)
    assert add_working_hours(local(2027, 5, 14, 15, 0), 8, HOURS) == datetime(2027, 5, 20, 12, 0, tzinfo=timezone.utc)


def test_a_year_after_the_confirmed_bayram_table_uses_the_estimate():
    # 2033 is past the Diyanet table (1936-2032): the package's estimate, Kurban arife Thu 10 March
    assert "tahmini" in closed_day(date(2033, 3, 11), HOURS)
    assert plus(local(2033, 3, 9, 17, 0), 4) == local(2033, 3, 10, 12, 0)      # 0.5 h + the half day's 3.5 h
    assert plus(local(2033, 3, 11, 10, 0), 1) == local(2033, 3, 15, 9, 30)     # bayram Fri-Mon


def test_an_instant_outside_working_hours_counts_from_the_next_working_moment():
    saturday_night = local(2026, 12, 5, 3, 0)
    assert not is_working_time(saturday_night, HOURS)
    assert plus(saturday_night, 0) == local(2026, 12, 7, 8, 30)
    assert plus(saturday_night, 1) == local(2026, 12, 7, 9, 30)
    assert plus(local(2026, 12, 7, 12, 45), 1) == local(2026, 12, 7, 14, 30)  # the lunch break does not count
    assert plus(local(2026, 12, 7, 17, 30), 0.5) == local(2026, 12, 8, 9, 0)
    assert is_working_time(local(2026, 12, 7, 8, 30), HOURS) and not is_working_time(local(2026, 12, 7, 12, 30), HOURS)


def test_istanbul_keeps_utc_plus_3_all_year():
    # Europe changes its clocks on 29 March and 25 October 2026; Istanbul does not (since 2016)
    for friday in (local(2026, 3, 27, 17, 0), local(2026, 10, 23, 17, 0)):
        monday = add_working_hours(friday, 1, HOURS)
        assert monday == (friday + timedelta(days=3) - timedelta(hours=8)).astimezone(timezone.utc)
        assert monday.hour == 6 and monday.minute == 0  # 09:00 in Istanbul = 06:00 UTC
    assert local(2026, 7, 1, 12).utcoffset() == local(2026, 1, 1, 12).utcoffset() == timedelta(hours=3)


def test_28_october_is_a_half_day_and_29_october_a_holiday():
    assert plus(local(2026, 10, 28, 12, 0), 1) == local(2026, 10, 30, 9, 0)


def test_extra_closed_days_and_other_working_weeks():
    leave = replace(HOURS, extra_closed_days=frozenset({date(2026, 12, 7)}))
    assert closed_day(date(2026, 12, 7), leave) == "closed"
    assert plus(local(2026, 12, 5, 3, 0), 1, leave) == local(2026, 12, 8, 9, 30)
    saturdays = WorkingHours(days=frozenset(range(6)), hours=((time(9), time(13)),))
    assert plus(local(2026, 12, 4, 12, 0), 2, saturdays) == local(2026, 12, 5, 10, 0)
    assert saturdays.hours_per_day == 4 and HOURS.hours_per_day == 8


def test_calendar_hours_run_through_nights_and_holidays():
    start = local(2026, 5, 26, 16, 0)  # Kurban arife
    assert due_at(start, 24, HOURS, calendar_hours=True) == datetime(2026, 5, 27, 13, 0, tzinfo=timezone.utc)
    assert elapsed_hours(start, local(2026, 5, 28, 16, 0), HOURS, calendar_hours=True) == 48
    assert elapsed_hours(start, local(2026, 5, 28, 16, 0), HOURS) == 0  # arife ends at 13:00, then bayram
    assert due_at(start, 8, HOURS) == add_working_hours(start, 8, HOURS)


def test_elapsed_and_added_hours_agree_and_naive_times_are_utc():
    rng = random.Random(15)
    for _ in range(200):
        start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
        hours = rng.choice([0.5, 1, 4, 8, 16, 24, 40, 80])
        end = add_working_hours(start, hours, HOURS)
        assert abs(working_hours_between(start, end, HOURS) - hours) < 1e-9
        assert is_working_time(end - timedelta(seconds=1), HOURS)
    naive = datetime(2026, 12, 7, 6, 0)  # 09:00 in Istanbul
    assert add_working_hours(naive, 1, HOURS) == datetime(2026, 12, 7, 7, 0, tzinfo=timezone.utc)
    assert working_hours_between(local(2026, 12, 7, 10), local(2026, 12, 7, 9), HOURS) == -1
    with pytest.raises(ValueError):
        add_working_hours(naive, -1, HOURS)


# ---------------------------------------------------------------- where a pin is
CATALOG = load_catalog(SAMPLE_CATALOG)
BOUNDARY = CATALOG.municipality.boundary


def test_point_in_polygon_and_distance():
    square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]
    assert geo.point_in_polygon((0.5, 0.5), square) and not geo.point_in_polygon((1.5, 0.5), square)
    assert not geo.point_in_polygon((0.5, 0.5), square[:2])
    kozagac, koop = CATALOG.neighbourhood("kozagac").centre, CATALOG.neighbourhood("buca_koop").centre
    assert geo.distance_m(kozagac, koop) == pytest.approx(1_829, abs=5)  # 1.51 km north, 1.03 km west
    assert geo.distance_to_ring_m((0.5, 0.5), square) == pytest.approx(55_660, rel=0.01)


def test_a_pin_finds_its_mahalle_by_polygon_then_by_nearest_centre():
    hoods = CATALOG.neighbourhoods
    assert geo.mahalle_of((38.38130, 27.16906), hoods) == "kozagac"
    assert geo.mahalle_of((38.3720, 27.1800), hoods) == "yildiz"
    # the one gap between two simplified polygons (about 170 m2, next to Dumlupınar): the nearest centre
    gap = (38.38223, 27.17641)
    assert not any(geo.point_in_polygon(gap, n.boundary) for n in hoods if n.boundary)
    assert geo.mahalle_of(gap, hoods) == min((n for n in hoods if n.centre),
                                             key=lambda n: geo.distance_m(gap, n.centre)).key
    # without polygons, the nearest centre within the limit
    centres = [replace(n, boundary=()) for n in hoods]
    assert geo.mahalle_of((38.3815, 27.1692), centres) == "kozagac"
    assert geo.mahalle_of((41.01, 28.97), hoods) is None  # Istanbul
    assert geo.mahalle_of((38.38, 27.17), []) is None


def test_a_pin_inside_near_or_outside_the_district():
    assert geo.where_in_district((38.38500, 27.17500), BOUNDARY) == geo.Where.INSIDE
    assert geo.where_in_district((41.01, 28.97), BOUNDARY) == geo.Where.OUTSIDE
    # about 500 m west of the district's western edge (Buca's border with Konak / Karabağlar)
    west = (38.37580, 27.13790 - 0.0057)
    assert not geo.point_in_polygon(west, BOUNDARY)
    assert geo.where_in_district(west, BOUNDARY) == geo.Where.NEAR
    assert geo.where_in_district(west, BOUNDARY, near_m=100) == geo.Where.OUTSIDE
    assert geo.where_in_district((38.38, 27.17), ()) == geo.Where.UNKNOWN
