"""The layout rules that keep the code base channel-agnostic."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("telegram", "twilio", "fastapi", "starlette", "uvicorn", "handlers")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_conversations_never_import_a_channel_library():
    offenders = []
    for path in sorted((ROOT / "conversations").rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_storage_never_imports_a_channel_library():
    offenders = []
    for path in sorted((ROOT / "storage").rglob("*.py")):
        for name in imported_modules(path):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def _imports_of_layer(layer: str) -> dict[str, set[str]]:
    """Every module of a top-level folder → the modules it imports (at any depth: a function's
    import counts as much as the file's)."""
    return {str(path.relative_to(ROOT)): imported_modules(path) for path in sorted((ROOT / layer).rglob("*.py"))}


def _offenders(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path} imports {name}" for path, names in _imports_of_layer(layer).items() for name in sorted(names)
            if name.split(".")[0] in forbidden]


def test_storage_imports_neither_conversations_nor_handlers_nor_bot():
    """The arrows point one way: handlers → conversations → storage (bot/ wires them). Storage keeps
    persistence only: it builds no message and holds no user-facing text."""
    assert _offenders("storage", ("conversations", "handlers", "bot")) == []
    # no catalog lookups either: the words are conversations/notify.py's
    marked = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "storage").rglob("*.py"))
              if re.search(r"\b(N_|t_in|translator)\(", path.read_text(encoding="utf-8"))]
    assert marked == []


def test_conversations_import_no_handler_and_no_bot_module():
    assert _offenders("conversations", ("handlers", "bot")) == []


def test_handlers_import_no_bot_module():
    """A channel edge gets what it needs (settings, the engine, the database) from the app that
    bot/ wires and hands it; it never reaches back up into bot/."""
    assert _offenders("handlers", ("bot",)) == []


def test_storage_and_conversations_agree_on_the_languages():
    """storage/broadcasts.py buckets residents by language without importing conversations."""
    from conversations.i18n import LANGUAGES
    from storage import broadcasts

    assert broadcasts.LANGUAGES == LANGUAGES


def test_one_aware_for_the_whole_code_base():
    """Datetimes read back from SQLite are made UTC-aware by storage.db.aware, not by copies."""
    copies = [str(path.relative_to(ROOT)) for folder in ("bot", "conversations", "handlers", "storage")
              for path in sorted((ROOT / folder).rglob("*.py")) if "def _aware(" in path.read_text(encoding="utf-8")]
    assert copies == []


def test_states_are_named_strings():
    import re

    from bot.features import build_registry

    states = build_registry().states
    assert states and all(re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*", name) for name in states)


def test_env_example_lists_every_setting_with_a_comment():
    from bot.settings import Settings

    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    missing, uncommented = [], []
    for name in Settings.model_fields:
        key = name.upper()
        index = next((i for i, line in enumerate(lines) if line.startswith(f"{key}=")), None)
        if index is None:
            missing.append(key)
            continue
        # a comment right above it, or above the group of settings it belongs to
        above = lines[max(0, index - 4):index]
        if not any(line.startswith("#") for line in above):
            uncommented.append(key)
    assert missing == [] and uncommented == []


def test_the_architecture_guide_answers_with_files_that_exist():
    """docs/ARCHITECTURE.md's "Where is it?" table: at least ten questions, each answered by at
    most two files, every one of which exists (the guide follows the code when files move)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## Where is it?")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| question")]
    assert len(rows) >= 10
    for row in rows:
        answer = row.rsplit("|", 2)[1]
        files = [p for p in re.findall(r"`([\w./<>-]+\.(?:py|po|toml|example))`", answer)] + \
                [p for p in re.findall(r"`([\w/]+/)`", answer)]
        assert 1 <= len(files) <= 2, row
        for path in files:
            if "<" not in path:
                assert (ROOT / path).exists(), f"{path} (in: {row[:60]}...)"
