"""The municipality catalog: one TOML file a municipality edits (name, mahalles, categories, pools).

Errors name the file, the line and the field, e.g.
``buca.toml:42: categories[3].name: the Turkish (tr) text is required``.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conversations.text import fold

LOCALES = ("tr", "en", "ar")


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


@dataclass(frozen=True)
class Category:
    key: str
    name: Localized
    sdg: tuple[int, ...]


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


@dataclass(frozen=True)
class Catalog:
    path: Path
    municipality: Municipality
    neighbourhoods: tuple[Neighbourhood, ...]
    categories: tuple[Category, ...]
    pools: tuple[Pool, ...]
    skills: tuple[tuple[str, Localized], ...] = field(default=())

    def neighbourhood(self, key: str) -> Neighbourhood | None:
        return next((n for n in self.neighbourhoods if n.key == key), None)

    def category(self, key: str) -> Category | None:
        return next((c for c in self.categories if c.key == key), None)

    def pool(self, key: str) -> Pool | None:
        return next((p for p in self.pools if p.key == key), None)


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
        pattern = re.compile(r"^\s*%s\s*=" % re.escape(key))
        for no in range(start + 1 if table else 0, len(self.lines)):
            if table and no > start and re.match(r"^\s*\[", self.lines[no]):
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
        hoods.append(Neighbourhood(name=name.strip(), key=re.sub(r"[^a-z0-9]+", "_", key).strip("_")))
    if not hoods:
        fail(None, None, None, "at least one [[neighbourhoods]] entry is required")

    cats: list[Category] = []
    seen: set[str] = set()
    for i, item in enumerate(data.get("categories") or []):
        key = key_of("categories", i, item, seen)
        cats.append(Category(key=key, name=localized("categories", i, "name", item.get("name")),
                             sdg=sdg("categories", i, item.get("sdg"))))
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

    return Catalog(path=path, municipality=municipality, neighbourhoods=tuple(hoods),
                   categories=tuple(cats), pools=tuple(pools), skills=tuple(skills))
