"""Translations from the Babel catalogs in locales/, and dates in the municipality's time zone.

Message ids are keys ("menu.title"), never prose: every user-visible sentence lives in
locales/<lang>/LC_MESSAGES/<first part of the key>.po and its compiled .mo.
"""
from __future__ import annotations

import gettext
import logging
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_datetime

import locales as _locales_pkg

LOCALES_DIR = Path(_locales_pkg.__file__).parent
LANGUAGES = ("tr", "en", "ar")
RTL = {"ar"}
# Dates as each language writes them: "4 Aralık 2026 Cuma 18:30", "Friday 4 December 2026, 18:30",
# "الجمعة 4 ديسمبر 2026، 18:30" (Babel patterns; a language without one uses the Turkish).
DATETIME_PATTERN = "d MMMM y EEEE HH:mm"
DATETIME_PATTERNS = {"tr": DATETIME_PATTERN, "en": "EEEE d MMMM y, HH:mm", "ar": "EEEE d MMMM y، HH:mm"}
log = logging.getLogger(__name__)


def N_(key: str) -> str:
    """Marks a key for extraction where it is chosen at run time."""
    return key


class _SafeDict(dict):
    def __missing__(self, key):
        return "{" + key + "}"


class Translator:
    def __init__(self, lang: str, catalogs: dict[str, str], plural) -> None:
        self.lang = lang
        self._catalog = catalogs
        self._plural = plural

    def __call__(self, key: str, **kwargs) -> str:
        text = self._catalog.get(key)
        if not text:
            log.warning("missing translation %s for %s", key, self.lang)
            text = key
        return text.format_map(_SafeDict(kwargs)) if kwargs else text

    def n(self, key: str, count: int, **kwargs) -> str:
        """Plural-aware: the .po entry has msgid=key, msgid_plural=key."""
        index = self._plural(count)
        text = self._catalog.get((key, index)) or self._catalog.get((key, 0)) or key
        return text.format_map(_SafeDict({"n": count, **kwargs}))

    def has(self, key: str) -> bool:
        return key in self._catalog or (key, 0) in self._catalog

    def join(self, items) -> str:
        """A list in running text, with the language's separator ("a, b" / "أ، ب")."""
        separator = self._catalog.get(N_("common.list_separator")) or ", "
        return separator.join(items)


def _one_or_other(n: int) -> int:
    """The plural form of a catalog without a Plural-Forms header: one, or other."""
    return int(n != 1)


@lru_cache(maxsize=8)
def translator(lang: str) -> Translator:
    if lang not in LANGUAGES:
        lang = "tr"
    merged: dict = {}
    plural = _one_or_other
    directory = LOCALES_DIR / lang / "LC_MESSAGES"
    for mo in sorted(directory.glob("*.mo")):
        with mo.open("rb") as fh:
            trans = gettext.GNUTranslations(fh)
        merged.update(trans._catalog)  # type: ignore[attr-defined]
        plural = trans.plural  # type: ignore[attr-defined]
    merged.pop("", None)
    return Translator(lang, merged, plural)


def format_when(dt: datetime, lang: str, tz: str | ZoneInfo = "Europe/Istanbul") -> str:
    """'24 Kasım 2026 Salı 18:00', 'Tuesday 24 November 2026, 18:00' (in the municipality's time zone)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    return format_datetime(dt, DATETIME_PATTERNS.get(lang, DATETIME_PATTERN), tzinfo=zone, locale=lang)


def t_in(lang: str, key: str, **kwargs) -> str:
    """A message in a given language (for texts shown before the resident's language is known)."""
    return translator(lang)(key, **kwargs)
