"""Turkish-aware text matching: casing (İ/ı) and diacritics-free typing ("kozagac" finds Kozağaç)."""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# The one folding of words (Turkish casing, diacritics, Arabic marks) is storage/fold.py's: what
# matching compares here is what the reports' search index stores. Re-exported for the callers.
from storage.fold import fold, tr_lower  # noqa: F401 - re-exported: conversations fold through this module


def match_options(typed: str, options: list[tuple[str, list[str]]]) -> list[str]:
    """Keys of the options whose names match what was typed, best first.

    ``options`` is a list of (key, [names...]). An exact folded match wins alone; otherwise names
    starting with the text, then names with a word starting with it ("kaldirim" → "Yol ve
    kaldırım", but "tree" is not "Street lighting"), then names whose words all start with the
    typed words ("vali rahmi" → "Vali Rahmi Bey").
    """
    q = fold(typed)
    if not q:
        return []
    exact, prefix, contains = [], [], []
    q_words = q.split()
    first = q_words[0]
    for key, names in options:
        rank = 3
        for f, words in _folded(tuple(names)):
            if f == q:
                rank = 0
                break
            if rank > 1 and f.startswith(q):
                rank = 1
            elif rank > 2 and ((" " + q) in (" " + f) or (words[0].startswith(first) and _words_match(q_words, words))):
                rank = 2
        if rank < 3:
            (exact, prefix, contains)[rank].append(key)
    if exact:
        return exact[:1] if len(exact) == 1 else exact
    return prefix + contains


@lru_cache(maxsize=4096)
def _folded(names: tuple[str, ...]) -> tuple[tuple[str, list[str]], ...]:
    """Each name folded, with its words (a name that folds to nothing is left out)."""
    return tuple((f, f.split()) for f in map(fold, names) if f)


def _words_match(q_words: list[str], words: list[str]) -> bool:
    return len(q_words) <= len(words) and all(w.startswith(q) for q, w in zip(q_words, words))


# The words that say "mahalle" around a mahalle's name, as people type them ("Yıldız Mahallesi",
# "yildiz mah.", "kozağaç mh", "Mah. Yıldız"), folded; and the English and Arabic ones.
MAHALLE_WORDS = frozenset(fold(w) for w in (
    "mahalle", "mahallesi", "mahallesinde", "mahallesindeyim", "mahallemiz", "mahallem", "mah", "mahl", "mh",
    "mhl", "mahal", "neighbourhood", "neighborhood", "quarter", "حي", "محلة"))


def strip_mahalle(typed: str) -> str:
    """What was typed, folded, without the words that say "mahalle" (the whole text when it is
    nothing else: someone looking for a mahalle named so)."""
    words = fold(typed).split()
    kept = [w for w in words if w not in MAHALLE_WORDS]
    return " ".join(kept or words)


def match_mahalle(typed: str, neighbourhoods, *, with_keys: bool = False) -> list[str]:
    """Keys of the catalog's mahalles matching what was typed, as `match_options` finds them, the
    words "Mahallesi", "mah.", "mh." and the like left out: every place a mahalle is typed
    (onboarding, a report's location, staff filters, broadcasts, the CLI) matches the same way."""
    options = [(n.key, [n.name, n.key] if with_keys else [n.name]) for n in neighbourhoods]
    return match_options(strip_mahalle(typed), options)


def key_for(typed: str, keys) -> str | None:
    """The key staff meant when they typed one of a catalog's keys (an event type, a category, a
    pool, a department, a status), Turkish-aware: "atölye" → "atolye", "Odak Grup" → "odak_grup",
    "ÇEVRE" → "cevre"; None when no key matches."""
    q = fold(typed).replace(" ", "_")
    return next((key for key in keys if fold(key).replace(" ", "_") == q), None) if q else None


def edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of two neighbours between two strings
    (optimal string alignment): "repot" → "report" 1, "yardmi" → "yardim" 1."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def closest(typed: str, names: list[str]) -> str | None:
    """The one name nearest to what was typed, folded Turkish-aware ("/yardım" → "yardim"), when it
    is near enough to be a slip (one edit in a short word, two in a longer one); None when there is
    none or two are as near."""
    q = fold(typed)
    if not q:
        return None
    scored = sorted((edit_distance(q, fold(name)), name) for name in dict.fromkeys(names))
    if not scored:
        return None
    best, name = scored[0]
    limit = 1 if len(q) <= 4 else 2
    if best > limit or (len(scored) > 1 and scored[1][0] == best and fold(scored[1][1]) != fold(name)):
        return None
    return name


_RECORD_ID = re.compile(r"[0-9]{1,18}")


def record_id(text: str) -> int | None:
    """A record id typed or carried in a button key ("12" in "ev:12:c", "/start ev_12"), or None:
    ASCII digits only ("²".isdigit() is true, int("²") fails) and at most 18 of them, so any
    id fits the databases' 64-bit integers (a longer one names no record)."""
    return int(text) if _RECORD_ID.fullmatch(text or "") else None


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def clean_text(text: str) -> str:
    """Drop control characters (keeping newlines and tabs) and trim."""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C" or c in "\u200f\u200e").strip()
