"""Folding words for matching and search: Turkish-lowered, diacritics removed, Arabic marks dropped,
spaces squeezed ("KOZAĞAÇ", "kozagac" and "Kozağaç" fold alike). The reports' search index
(storage/reports.py `search_words`, migration 0017) stores folded words; conversations/text.py
matches typed text with the same function (it re-exports `fold` and `tr_lower`)."""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_TR_LOWER = str.maketrans({"I": "ı", "İ": "i"})
_FOLD = str.maketrans({"ı": "i", "ğ": "g", "ü": "u", "ş": "s", "ö": "o", "ç": "c", "â": "a", "î": "i", "û": "u"})
_ARABIC_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_SPACES = re.compile(r"[\s\-_.,;:!?'\"’`()]+")


def tr_lower(text: str) -> str:
    """Lower-case with Turkish rules: I → ı, İ → i."""
    return text.translate(_TR_LOWER).lower()


@lru_cache(maxsize=8192)  # the same labels and names are folded again and again
def fold(text: str) -> str:
    """A key for matching: Turkish-lowered, diacritics removed, Arabic marks dropped, spaces squeezed.

    >>> fold("KOZAĞAÇ") == fold("kozagac") == fold("Kozağaç")
    True
    >>> fold("İPTAL") == fold("Iptal") == fold("iptal")
    True
    """
    text = tr_lower(unicodedata.normalize("NFC", text)).translate(_FOLD)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = _ARABIC_MARKS.sub("", text)
    text = text.replace("أ", "ا").replace("إ", "ا").replace("آ", "ا").replace("ة", "ه").replace("ى", "ي")
    return _SPACES.sub(" ", text).strip()
