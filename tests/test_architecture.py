"""The layout rules that keep the code base channel-agnostic."""
import ast
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
