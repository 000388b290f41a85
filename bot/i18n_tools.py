"""Message catalog tools: extract keys from the code, update the .po files, compile the .mo files,
check that every key has a translation in every language.

    python -m bot.i18n_tools update    # add new keys to locales/<lang>/LC_MESSAGES/<domain>.po
    python -m bot.i18n_tools compile   # write the .mo files next to them
    python -m bot.i18n_tools check     # exit 1 and list what is missing or stale
    python -m bot.i18n_tools set FILE.json   # write translations {"key": ["tr", "en", "ar"]}
                                             # (a plural key: [["tr1","tr2"], ["en1","en2"], [six ar forms]])

A key's domain is its first part ("report.title" lives in report.po); the base conversation's
keys share core.po. Keys are found in the Python code and in the staff console's Jinja2 templates
(handlers/panel/templates/*.html, calls of `t("...")`). The staff console's own domain `panel` is
in Turkish and English only (DOMAIN_LANGUAGES): `set` takes ["tr", "en"] for its keys. Plural keys (used with
``t.n(key, count)``) get one form per plural category: Turkish has two (one/other), Arabic six.
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from collections import defaultdict
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo, write_mo
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
LOCALES_DIR = ROOT / "locales"
SOURCE_DIRS = ("bot", "conversations", "handlers", "storage")
LANGUAGES = ("tr", "en", "ar")
PLURALS = {
    "tr": (2, "(n != 1)"),
    "en": (2, "(n != 1)"),
    "ar": (6, "(n==0 ? 0 : n==1 ? 1 : n==2 ? 2 : n%100>=3 && n%100<=10 ? 3 : n%100>=11 ? 4 : 5)"),
}
KEYWORDS = {"t": (1,), "N_": (1,), "t_in": (2,), "n": (1,), "Np_": (1,), "Invalid": (1,)}
PLURAL_CALLS = {"n", "Np_"}
METHODS = [("**.py", "python"), ("**/templates/**.html", "jinja2.ext:babel_extract")]
# Domains not translated into every language: the staff console speaks Turkish and English.
DOMAIN_LANGUAGES = {"panel": ("tr", "en")}


def languages_of(domain: str) -> tuple[str, ...]:
    return DOMAIN_LANGUAGES.get(domain, LANGUAGES)


def extract() -> dict[str, bool]:
    """Every message key in the code → whether it is a plural key."""
    keys: dict[str, bool] = {}
    noise = io.StringIO()
    for folder in SOURCE_DIRS:
        path = ROOT / folder
        if not path.exists():
            continue
        with contextlib.redirect_stderr(noise):
            found = list(extract_from_dir(str(path), method_map=METHODS, keywords=KEYWORDS,
                                          comment_tags=(), strip_comment_tags=True))
        for _file, _line, message, _comments, _ctx in found:
            if isinstance(message, tuple):
                message = message[0]
            if not message or "." not in message or " " in message:
                continue
            keys.setdefault(message, False)
    # Babel notes every f-string it meets in a keyword call (a key built at run time, a formatted
    # argument): those keys are listed with N_ beside them; anything else it says is passed on.
    for line in noise.getvalue().splitlines():
        if "Skipping f-string" not in line:
            print(line, file=sys.stderr)
    # plural keys: find calls .n("key"  /  Np_("key"
    import re

    plural_re = re.compile(r"""(?:\.n|\bNp_)\(\s*["']([a-z0-9_]+\.[a-z0-9_.]+)["']""")
    for folder in SOURCE_DIRS:
        for file in (ROOT / folder).rglob("*.py"):
            for key in plural_re.findall(file.read_text(encoding="utf-8")):
                keys[key] = True
    return keys


# The base conversation's keys share one catalog; every feature has its own (report.po, event.po...).
CORE_PREFIXES = {"cancel", "command", "common", "consent", "data", "engine", "help", "kind", "language",
                 "mahalle", "menu", "notice", "onboarding", "privacy", "start", "words", "staff", "console",
                 "channel"}


def domain_of(key: str) -> str:
    prefix = key.split(".", 1)[0]
    return "core" if prefix in CORE_PREFIXES else prefix


def po_path(lang: str, domain: str) -> Path:
    return LOCALES_DIR / lang / "LC_MESSAGES" / f"{domain}.po"


def new_catalog(lang: str, domain: str) -> Catalog:
    cat = Catalog(locale=lang, domain=domain, project="katilim", version="1", charset="utf-8",
                  msgid_bugs_address="", fuzzy=False)
    _set_plural(cat, lang)
    return cat


def _set_plural(cat: Catalog, lang: str) -> None:
    cat._num_plurals, cat._plural_expr = PLURALS[lang]  # type: ignore[attr-defined]


def load(lang: str, domain: str) -> Catalog:
    path = po_path(lang, domain)
    if not path.exists():
        return new_catalog(lang, domain)
    with path.open("rb") as fh:
        cat = read_po(fh, locale=lang, domain=domain)
    _set_plural(cat, lang)
    return cat


def save(cat: Catalog, lang: str, domain: str) -> None:
    path = po_path(lang, domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    write_po(buf, cat, width=0, sort_output=True, omit_header=False, include_lineno=False,
             include_previous=False)
    path.write_bytes(buf.getvalue())


def domains_on_disk() -> set[str]:
    return {p.stem for p in LOCALES_DIR.glob("*/LC_MESSAGES/*.po")}


def update() -> None:
    keys = extract()
    by_domain: dict[str, dict[str, bool]] = defaultdict(dict)
    for key, plural in keys.items():
        by_domain[domain_of(key)][key] = plural
    for lang in LANGUAGES:
        for domain in sorted(set(by_domain) | domains_on_disk()):
            if lang not in languages_of(domain):
                continue
            cat = load(lang, domain)
            wanted = by_domain.get(domain, {})
            for key, plural in wanted.items():
                if key not in cat:
                    cat.add((key, key) if plural else key,
                            string=("",) * PLURALS[lang][0] if plural else "")
            for message in list(cat):
                if message.id and (message.id[0] if isinstance(message.id, tuple) else message.id) not in wanted:
                    cat.delete(message.id[0] if isinstance(message.id, tuple) else message.id)
            if len(cat):
                save(cat, lang, domain)
            elif po_path(lang, domain).exists():
                po_path(lang, domain).unlink()
                po_path(lang, domain).with_suffix(".mo").unlink(missing_ok=True)


def compile_all() -> None:
    for po in sorted(LOCALES_DIR.glob("*/LC_MESSAGES/*.po")):
        lang = po.parent.parent.name
        cat = load(lang, po.stem)
        buf = io.BytesIO()
        write_mo(buf, cat, use_fuzzy=False)
        po.with_suffix(".mo").write_bytes(buf.getvalue())


def _mo_entries(data: bytes) -> dict:
    cat = read_mo(io.BytesIO(data))
    def frozen(value):  # a plural message's id and strings come back as lists
        return tuple(value) if isinstance(value, (list, tuple)) else value

    return {frozen(m.id): frozen(m.string) for m in cat if m.id}


def check() -> list[str]:
    problems: list[str] = []
    keys = extract()
    for lang in LANGUAGES:
        for key, plural in sorted(keys.items()):
            if lang not in languages_of(domain_of(key)):
                continue
            cat = load(lang, domain_of(key))
            message = cat.get(key)
            if message is None:
                problems.append(f"{lang}: {key} is missing from {po_path(lang, domain_of(key)).relative_to(ROOT)}")
                continue
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            if plural and not isinstance(message.id, tuple):
                problems.append(f"{lang}: {key} is used with a count but has no plural forms")
            if not all(s.strip() for s in strings):
                problems.append(f"{lang}: {key} has no translation")
            if plural and len(strings) != PLURALS[lang][0]:
                problems.append(f"{lang}: {key} needs {PLURALS[lang][0]} plural forms, has {len(strings)}")
        for po in sorted((LOCALES_DIR / lang / "LC_MESSAGES").glob("*.po")):
            header = po.read_text(encoding="utf-8")
            expected = f"nplurals={PLURALS[lang][0]};"
            if expected not in header:
                problems.append(f"{po.relative_to(ROOT)}: the Plural-Forms header must say {expected}")
            mo = po.with_suffix(".mo")
            if not mo.exists():
                problems.append(f"{mo.relative_to(ROOT)} is missing: run make locales")
                continue
            buf = io.BytesIO()
            write_mo(buf, load(lang, po.stem), use_fuzzy=False)
            if _mo_entries(buf.getvalue()) != _mo_entries(mo.read_bytes()):
                problems.append(f"{mo.relative_to(ROOT)} is older than its .po: run make locales")
    return problems


def set_translations(data: dict) -> None:
    """Write translations for the given keys only (their domains' .po files), in every language."""
    by_domain: dict[str, dict] = defaultdict(dict)
    for key, values in data.items():
        by_domain[domain_of(key)][key] = values
    for lang_index, lang in enumerate(LANGUAGES):
        for domain, entries in by_domain.items():
            if lang not in languages_of(domain):
                continue
            cat = load(lang, domain)
            for key, values in entries.items():
                value = values[lang_index]
                plural = isinstance(value, list)
                existing = cat.get(key)
                if existing is not None and isinstance(existing.id, tuple) != plural:
                    cat.delete(key)
                    existing = None
                if existing is None:
                    cat.add((key, key) if plural else key, string=tuple(value) if plural else value)
                else:
                    existing.string = tuple(value) if plural else value
            save(cat, lang, domain)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    what = args[0] if args else "check"
    if what == "update":
        update()
    elif what == "compile":
        compile_all()
    elif what == "set":
        for name in args[1:]:
            set_translations(json.loads(Path(name).read_text(encoding="utf-8")))
        compile_all()
    elif what == "check":
        problems = check()
        for p in problems:
            print(p)
        return 1 if problems else 0
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
