"""Helpers for the privacy tests: a dump of every table (found through the database's own
catalog, not our models, so a table a later feature adds is dumped too) and of every file under
MEDIA_DIR, and the search of that dump for what identifies a resident."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from sqlalchemy import MetaData, inspect, select
from sqlalchemy.engine import Engine


@dataclass
class Dump:
    rows: list[tuple[str, str]] = field(default_factory=list)   # (table, the row as text)
    files: list[tuple[str, bytes]] = field(default_factory=list)  # (path under MEDIA_DIR, bytes)
    tables: int = 0

    def hits(self, needles: list[str]) -> list[str]:
        """Every row and file (name or bytes) holding one of the needles, with the needle."""
        found = []
        for table, row in self.rows:
            for needle in needles:
                if needle.casefold() in row.casefold():
                    found.append(f"{table}: {needle!r} in {row[:300]}")
        for name, data in self.files:
            for needle in needles:
                if needle in name or needle.encode("utf-8") in data:
                    found.append(f"file {name}: {needle!r}")
        return found

    def text(self) -> str:
        return "\n".join(row for _, row in self.rows)


def dump(engine: Engine, media_dir: Path) -> Dump:
    """SELECT * from every table the database has (SQLite or PostgreSQL), and every file under
    media_dir with its bytes."""
    result = Dump()
    metadata = MetaData()
    names = inspect(engine).get_table_names()
    metadata.reflect(bind=engine, only=names)
    result.tables = len(names)
    with engine.connect() as conn:
        for name in names:
            for row in conn.execute(select(metadata.tables[name])).mappings():
                result.rows.append((name, json.dumps(dict(row), ensure_ascii=False, default=str)))
    if media_dir.exists():
        for path in sorted(media_dir.rglob("*")):
            if path.is_file():
                result.files.append((str(path.relative_to(media_dir)), path.read_bytes()))
    return result


def jpeg(seed: int, size: int = 24) -> bytes:
    """A small real JPEG, different for each seed."""
    image = Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    for x in range(size):
        image.putpixel((x, (x * seed) % size), (255 - seed % 256, x * 7 % 256, 90))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def strings_in(value) -> list[str]:
    """Every string inside a JSON value (keys too)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []
