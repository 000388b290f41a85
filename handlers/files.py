"""Files served from storage over HTTP (Open311 photos, the console's media, the signed links
WhatsApp fetches).

Every file served from storage goes through
`stored_file`: its Content-Type is decided from the file's first bytes (never from what a client
said when it was uploaded, nor from a file name), with `X-Content-Type-Options: nosniff`, a
Content-Security-Policy that allows nothing (`default-src 'none'; sandbox`: an HTML or SVG file
cannot run a script on our origin even if one got stored) and `Cache-Control: private, no-store`.
"""
from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Collection

from fastapi.responses import FileResponse

STORED_FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "no-referrer",
}
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
TEXT_TYPE = "text/plain; charset=utf-8"
_SIGNATURES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"), (b"%PDF-", "application/pdf"), (b"OggS", "audio/ogg"),
               (b"#!AMR", "audio/amr"), (b"ID3", "audio/mpeg"))
_BINARY = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def sniff_content_type(head: bytes) -> str:
    """The type of a file from its first bytes: a known image, document or audio signature;
    else UTF-8 text without control characters is text/plain; anything else octet-stream."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:12] in (b"M4A ", b"M4B ") else "video/mp4"
    for magic, content_type in _SIGNATURES:
        if head.startswith(magic):
            return content_type
    try:
        sample = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "application/octet-stream" if _BINARY.search(sample) else TEXT_TYPE


def stored_file(path: Path, *, allowed: Collection[str] | None = None, filename: str | None = None):
    """The response serving a stored file (see the module's docstring), or None when it cannot be
    read or its type is not `allowed`. `filename` makes it a download with that (sanitised) name."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    content_type = sniff_content_type(head)
    if allowed is not None and content_type not in allowed:
        return None
    name = re.sub(r"[^\w.\-]", "_", Path(filename).name)[:80] if filename else None
    return FileResponse(path, media_type=content_type, filename=name or None, headers=dict(STORED_FILE_HEADERS))
