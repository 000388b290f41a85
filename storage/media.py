"""The content-addressed media store under MEDIA_DIR: photos, voice notes and files from every
channel are kept as <sha256 of the bytes><extension>, written atomically, size-capped."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


class MediaTooLarge(ValueError):
    """A file over MEDIA_MAX_BYTES: not downloaded (or not sent)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"file of {size} bytes is over the {limit} byte limit (MEDIA_MAX_BYTES)")
        self.size = size
        self.limit = limit


def check_size(size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise MediaTooLarge(size, limit)


def path_for(folder: Path | str, data: bytes, suffix: str) -> Path:
    return Path(folder) / f"{hashlib.sha256(data).hexdigest()}{suffix}"


def store(folder: Path | str, data: bytes, suffix: str) -> Path:
    """Keep the bytes under their hash (once: the same photo sent twice is one file)."""
    target = path_for(folder, data, suffix)
    if not target.exists():
        write_atomically(target, data)
    else:
        os.utime(target)  # stored again: fresh for housekeeping's sweep of old unreferenced files
    return target


def write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
