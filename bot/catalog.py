"""The municipality catalog: one TOML file a municipality edits (name, mahalles, categories, pools,
departments, working hours, response templates).

Errors name the file, the line and the field, e.g.
``buca.toml:42: categories[3].name: the Turkish (tr) text is required``.

Staff console fields (issue 15) and resident matching (issue 14):
- ``[[departments]]``: ``key``, ``name`` per language (tr required);
- per category: ``department`` (a department key), ``sla_hours`` (the target response time, in
  working hours unless ``sla_calendar = true``), ``synonyms.tr|en|ar`` (the words residents use);
- per mahalle: optional ``centre = [lat, lon]`` and ``boundary = [[lat, lon], ...]``;
- ``[municipality]``: optional ``boundary`` (the district); ``[municipality.working_hours]``:
  ``days`` ("mon-fri"), ``hours`` ("08:30-12:30,13:30-17:30"), ``half_day_end`` (arife half days
  end at this time, "13:00"), ``extra_closed_days`` (announced administrative leave);
- ``[[response_templates]]``: ``key``, ``status``, optional ``categories``, ``title`` and ``text``
  per language; the text may use {code}, {category}, {mahalle} and {municipality}.
"""
from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conversations.text import fold
from conversations.worktime import DAY_NAMES, WorkingHours

LOCALES = ("tr", "en", "ar")
# Statuses a response template may be written for (storage.reports.STATUSES less "new" and "merged",
# which staff never set by hand).
TEMPLATE_STATUSES = ("seen", "in_progress", "resolved", "rejected")
TEMPLATE_PLACEHOLDERS = ("code", "category", "mahalle", "municipality")
MAX_SLA_HOURS = 24 * 365
Point = tuple[float, float]


class CatalogError(Exception):
    pass


@dataclass(frozen=True)
class Localized:
    """A text per language; Turkish is required, the others fall back to it."""

    values: dict[str, str]

    def get(self, locale: str) -> str:
        return self.values.get(locale) or self.values["tr"]

    def all_forms(self) -> list[str]:
        return [v for v in self.values.values() if v]


@dataclass(frozen=True)
class Neighbourhood:
    name: str
    key: str
    centre: Point | None = None           # [lat, lon] (WGS84)
    boundary: tuple[Point, ...] = ()      # a ring of [lat, lon]


@dataclass(frozen=True)
class Department:
    key: str
    name: Localized


@dataclass(frozen=True)
class Category:
    key: str
    name: Localized
    sdg: tuple[int, ...]
    department: str = ""                  # a Department key ("" when the catalog has none)
    sla_hours: float | None = None        # target response time
    sla_calendar: bool = False            # sla_hours in calendar hours (default: working hours)
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per language

    def words(self) -> list[str]:
        """Everything a resident may type to name this category: its names and synonyms in every
        language, and its key."""
        return self.name.all_forms() + [self.key] + [w for words in self.synonyms.values() for w in words]


@dataclass(frozen=True)
class ResponseTemplate:
    """A ready answer staff start from when setting a status (editable before it is sent)."""

    key: str
    status: str
    categories: tuple[str, ...]           # empty: every category
    title: Localized
    text: Localized

    def applies(self, status: str, category: str) -> bool:
        return self.status == status and (not self.categories or category in self.categories)


@dataclass(frozen=True)
class Pool:
    key: str
    name: Localized
    description: Localized
    sdg: tuple[int, ...]


@dataclass(frozen=True)
class Municipality:
    name: Localized
    timezone: str
    privacy_notice_url: str
    tracking_prefix: str
    contact: str = ""
    boundary: tuple[Point, ...] = ()      # the district's outline, [lat, lon]
    working_hours: WorkingHours = field(default_factory=WorkingHours)


@dataclass(frozen=True)
class Catalog:
    path: Path
    municipality: Municipality
    neighbourhoods: tuple[Neighbourhood, ...]
    categories: tuple[Category, ...]
    pools: tuple[Pool, ...]
    skills: tuple[tuple[str, Localized], ...] = field(default=())
    departments: tuple[Department, ...] = ()
    response_templates: tuple[ResponseTemplate, ...] = ()

    def department(self, key: str) -> Department | None:
        return next((d for d in self.departments if d.key == key), None)

    def templates_for(self, status: str, category: str) -> list[ResponseTemplate]:
        """The response templates for a status and a category: the category's own first."""
        found = [r for r in self.response_templates if r.applies(status, category)]
        return sorted(found, key=lambda r: not r.categories)

    def neighbourhood(self, key: str) -> Neighbourhood | None:
        return next((n for n in self.neighbourhoods if n.key == key), None)

    def category(self, key: str) -> Category | None:
        return next((c for c in self.categories if c.key == key), None)

    def pool(self, key: str) -> Pool | None:
        return next((p for p in self.pools if p.key == key), None)


_HEADER = re.compile(r"^\s*\[\[?\s*[A-Za-z_\"']")  # a table header, not a line of an array of points


class _Locator:
    """Finds the line of a field in the TOML text, for error messages."""

    def __init__(self, text: str):
        self.lines = text.splitlines()

    def line(self, table: str | None, index: int | None, key: str | None) -> int:
        start = 0
        if table is not None:
            header = re.compile(r"^\s*\[\[\s*%s\s*\]\]" % re.escape(table) if index is not None
                                else r"^\s*\[\s*%s\s*\]" % re.escape(table))
            seen = -1
            for no, line in enumerate(self.lines):
                if header.match(line):
                    seen += 1
                    if index is None or seen == index:
                        start = no
                        break
            else:
                return 1
        if key is None:
            return start + 1
        pattern = re.compile(r"^\s*%s\s*[=.]" % re.escape(key))
        for no in range(start + 1 if table else 0, len(self.lines)):
            if table and no > start and _HEADER.match(self.lines[no]):
                break
            if pattern.match(self.lines[no]):
                return no + 1
        return start + 1


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise CatalogError(f"{path}:{line}: the catalog is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                           "save it as UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: {exc}") from None
    loc = _Locator(text)

    def fail(table, index, key, message):
        where = table if index is None else f"{table}[{index + 1}]"
        if key:
            where += f".{key}"
        raise CatalogError(f"{path}:{loc.line(table, index, key)}: {where}: {message}")

    def localized(table, index, key, value, required=True) -> Localized:
        if value is None and not required:
            return Localized({"tr": ""})
        if isinstance(value, str):
            value = {"tr": value}
        if not isinstance(value, dict):
            fail(table, index, key, "expected a text or a table of texts per language (tr, en, ar)")
        unknown = set(value) - set(LOCALES)
        if unknown:
            fail(table, index, key, f"unknown language {sorted(unknown)[0]!r} (use tr, en, ar)")
        if not isinstance(value.get("tr"), str) or not value["tr"].strip():
            fail(table, index, key, "the Turkish (tr) text is required")
        for lang, val in value.items():
            if not isinstance(val, str):
                fail(table, index, key, f"the {lang} text must be a string")
        return Localized({k: v.strip() for k, v in value.items()})

    def sdg(table, index, value) -> tuple[int, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, int) and 1 <= v <= 17 for v in value):
            fail(table, index, "sdg", "expected a list of Sustainable Development Goal numbers 1-17")
        return tuple(value)

    def key_of(table, index, item, seen):
        key = item.get("key")
        if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", key or ""):
            fail(table, index, "key", "required: lowercase letters, digits and _ (at most 32)")
        if key in seen:
            fail(table, index, "key", f"duplicate key {key!r}")
        seen.add(key)
        return key

    def point(table, index, key, value) -> Point:
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            fail(table, index, key, "expected [latitude, longitude] in degrees, e.g. [38.3881, 27.1744]")
        lat, lon = float(value[0]), float(value[1])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            fail(table, index, key, f"[{value[0]}, {value[1]}] is not a [latitude, longitude] "
                                    "(latitude -90..90, longitude -180..180)")
        return lat, lon

    def ring(table, index, key, value) -> tuple[Point, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or len(value) < 3:
            fail(table, index, key, "expected a list of at least 3 [latitude, longitude] points")
        return tuple(point(table, index, key, v) for v in value)

    def working_hours(value) -> WorkingHours:
        table = "municipality.working_hours"
        defaults = WorkingHours()
        if value is None:
            return defaults
        if not isinstance(value, dict):
            fail("municipality", None, "working_hours", "expected a [municipality.working_hours] table")
        unknown = sorted(set(value) - {"days", "hours", "half_day_end", "extra_closed_days"})
        if unknown:
            fail(table, None, unknown[0], "unknown field (use days, hours, half_day_end, extra_closed_days)")
        days = defaults.days
        if "days" in value:
            days = _parse_days(value["days"]) if isinstance(value["days"], str) else None
            if days is None:
                fail(table, None, "days", 'expected weekdays such as "mon-fri" or "mon,tue,wed,thu,fri"')
        hours = defaults.hours
        if "hours" in value:
            hours = _parse_intervals(value["hours"]) if isinstance(value["hours"], str) else None
            if hours is None:
                fail(table, None, "hours", 'expected times of day in order, e.g. "08:30-12:30,13:30-17:30"')
        half = defaults.half_day_end
        if "half_day_end" in value:
            half = _parse_clock(value["half_day_end"]) if isinstance(value["half_day_end"], str) else None
            if half is None:
                fail(table, None, "half_day_end", 'expected a time of day, e.g. "13:00"')
        closed: set[date] = set()
        given = value.get("extra_closed_days", [])
        if not isinstance(given, list):
            fail(table, None, "extra_closed_days", 'expected a list of dates, e.g. ["2026-05-25"]')
        for day in given:
            if isinstance(day, str):
                try:
                    day = date.fromisoformat(day.strip())
                except ValueError:
                    fail(table, None, "extra_closed_days", f"{day!r} is not a date (YYYY-MM-DD)")
            if not isinstance(day, date) or hasattr(day, "hour"):
                fail(table, None, "extra_closed_days", f"{day!r} is not a date (YYYY-MM-DD)")
            closed.add(day)
        return WorkingHours(days=days, hours=hours, half_day_end=half, extra_closed_days=frozenset(closed))

    def synonyms_of(index, value, category_key, owners: dict[str, str]) -> dict[str, tuple[str, ...]]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            fail("categories", index, "synonyms", "expected a list per language: synonyms.tr = [...], synonyms.en = [...]")
        found: dict[str, tuple[str, ...]] = {}
        for lang, words in value.items():
            where = f"synonyms.{lang}"
            if lang not in LOCALES:
                fail("categories", index, where, f"unknown language {lang!r} (use tr, en, ar)")
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                fail("categories", index, where, "expected a list of words, e.g. [\"çukur\", \"asfalt\"]")
            for word in words:
                owner = owners.setdefault(fold(word), category_key)
                if owner != category_key:
                    fail("categories", index, where, f"{word!r} already names the category {owner!r}")
            found[lang] = tuple(w.strip() for w in words)
        return found

    m = data.get("municipality")
    if not isinstance(m, dict):
        fail(None, None, None, "the [municipality] table is missing")
    tz = m.get("timezone", "Europe/Istanbul")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        fail("municipality", None, "timezone", f"unknown time zone {tz!r}")
    url = m.get("privacy_notice_url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        fail("municipality", None, "privacy_notice_url", "required: the URL of the full privacy notice")
    prefix = m.get("tracking_prefix")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Z]{2,6}", prefix or ""):
        fail("municipality", None, "tracking_prefix", "required: 2 to 6 capital letters, e.g. BCA")
    municipality = Municipality(
        name=localized("municipality", None, "name", m.get("name")),
        timezone=tz,
        privacy_notice_url=url,
        tracking_prefix=prefix,
        contact=str(m.get("contact", "")),
        boundary=ring("municipality", None, "boundary", m.get("boundary")),
        working_hours=working_hours(m.get("working_hours")),
    )

    hoods: list[Neighbourhood] = []
    seen_names: set[str] = set()
    for i, item in enumerate(data.get("neighbourhoods") or []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name.strip():
            fail("neighbourhoods", i, "name", "required")
        key = fold(name)
        if key in seen_names:
            fail("neighbourhoods", i, "name", f"duplicate mahalle {name!r}")
        seen_names.add(key)
        centre = item.get("centre")
        hoods.append(Neighbourhood(name=name.strip(), key=re.sub(r"[^a-z0-9]+", "_", key).strip("_"),
                                   centre=None if centre is None else point("neighbourhoods", i, "centre", centre),
                                   boundary=ring("neighbourhoods", i, "boundary", item.get("boundary"))))
    if not hoods:
        fail(None, None, None, "at least one [[neighbourhoods]] entry is required")

    departments: list[Department] = []
    seen = set()
    for i, item in enumerate(data.get("departments") or []):
        key = key_of("departments", i, item, seen)
        departments.append(Department(key=key, name=localized("departments", i, "name", item.get("name"))))
    department_keys = {d.key for d in departments}

    cats: list[Category] = []
    seen = set()
    synonym_owner: dict[str, str] = {}
    for i, item in enumerate(data.get("categories") or []):
        key = key_of("categories", i, item, seen)
        department = item.get("department", "")
        if department and department not in department_keys or not isinstance(department, str):
            known = ", ".join(sorted(department_keys)) or "none: add [[departments]] first"
            fail("categories", i, "department", f"unknown department {department!r} (known: {known})")
        sla = item.get("sla_hours")
        if sla is not None and (isinstance(sla, bool) or not isinstance(sla, (int, float))
                                or not 0 < sla <= MAX_SLA_HOURS):
            fail("categories", i, "sla_hours", f"expected a number of hours above 0 and at most {MAX_SLA_HOURS}")
        calendar = item.get("sla_calendar", False)
        if not isinstance(calendar, bool):
            fail("categories", i, "sla_calendar", "expected true (calendar hours) or false (working hours)")
        synonyms = synonyms_of(i, item.get("synonyms"), key, synonym_owner)
        cats.append(Category(key=key, name=localized("categories", i, "name", item.get("name")),
                             sdg=sdg("categories", i, item.get("sdg")), department=department,
                             sla_hours=None if sla is None else float(sla), sla_calendar=calendar,
                             synonyms=synonyms))
    if not cats:
        fail(None, None, None, "at least one [[categories]] entry is required")

    pools: list[Pool] = []
    seen = set()
    for i, item in enumerate(data.get("pools") or []):
        key = key_of("pools", i, item, seen)
        pools.append(Pool(key=key, name=localized("pools", i, "name", item.get("name")),
                          description=localized("pools", i, "description", item.get("description"), required=False),
                          sdg=sdg("pools", i, item.get("sdg"))))

    skills: list[tuple[str, Localized]] = []
    seen = set()
    for i, item in enumerate(data.get("skills") or []):
        key = key_of("skills", i, item, seen)
        skills.append((key, localized("skills", i, "name", item.get("name"))))

    templates: list[ResponseTemplate] = []
    seen = set()
    category_keys = {c.key for c in cats}
    for i, item in enumerate(data.get("response_templates") or []):
        key = key_of("response_templates", i, item, seen)
        status = item.get("status")
        if status not in TEMPLATE_STATUSES:
            fail("response_templates", i, "status", f"expected one of {', '.join(TEMPLATE_STATUSES)}")
        scope = item.get("categories", [])
        if not isinstance(scope, list) or not all(isinstance(c, str) for c in scope):
            fail("response_templates", i, "categories", "expected a list of category keys")
        for c in scope:
            if c not in category_keys:
                fail("response_templates", i, "categories", f"unknown category {c!r}")
        text = localized("response_templates", i, "text", item.get("text"))
        for lang, value in text.values.items():
            for name in _placeholders(value):
                if name not in TEMPLATE_PLACEHOLDERS:
                    fail("response_templates", i, "text", f"unknown placeholder {{{name}}} in the {lang} text "
                         f"(use {', '.join('{' + p + '}' for p in TEMPLATE_PLACEHOLDERS)})")
        templates.append(ResponseTemplate(key=key, status=status, categories=tuple(scope),
                                          title=localized("response_templates", i, "title", item.get("title")),
                                          text=text))

    return Catalog(path=path, municipality=municipality, neighbourhoods=tuple(hoods),
                   categories=tuple(cats), pools=tuple(pools), skills=tuple(skills),
                   departments=tuple(departments), response_templates=tuple(templates))


def _placeholders(text: str) -> list[str]:
    """The {names} a text uses; a lone brace is an error too (it would break formatting)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError:
        return ["unbalanced braces"]


def _parse_clock(text: str) -> time | None:
    found = re.fullmatch(r"([01]?\d|2[0-3])[:.]([0-5]\d)", text.strip())
    return time(int(found.group(1)), int(found.group(2))) if found else None


def _parse_days(text: str) -> frozenset[int] | None:
    """"mon-fri", "mon,wed,fri", "mon-fri,sat" → weekday numbers (Monday 0)."""
    days: set[int] = set()
    for part in text.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAY_NAMES or (last and last not in DAY_NAMES):
            return None
        a, b = DAY_NAMES.index(first), DAY_NAMES.index(last or first)
        if b < a:
            return None
        days.update(range(a, b + 1))
    return frozenset(days) or None


def _parse_intervals(text: str) -> tuple[tuple[time, time], ...] | None:
    """"08:30-12:30,13:30-17:30" → the intervals, each starting before it ends, in order, apart."""
    found: list[tuple[time, time]] = []
    for part in text.split(","):
        start, sep, end = part.partition("-")
        a, b = _parse_clock(start), _parse_clock(end) if sep else None
        if a is None or b is None or a >= b or (found and a < found[-1][1]):
            return None
        found.append((a, b))
    return tuple(found) or None
