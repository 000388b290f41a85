"""The HTTP server (FastAPI + uvicorn): health, channel webhooks and APIs.

Every file served from storage (Open311 photos, the signed links WhatsApp fetches) goes through
`stored_file`: its Content-Type is decided from the file's first bytes (never from what a client
said when it was uploaded, nor from a file name), with `X-Content-Type-Options: nosniff`, a
Content-Security-Policy that allows nothing (`default-src 'none'; sandbox`: an HTML or SVG file
cannot run a script on our origin even if one got stored) and `Cache-Control: private, no-store`.
"""
from __future__ import annotations

import asyncio
import codecs
import logging
import re
from pathlib import Path
from typing import Collection

import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse
from sqlalchemy import text

log = logging.getLogger(__name__)

# Feature routers (Open311 ...) register a function(app, http_app) here.
HTTP_HOOKS: list = []


def create_http_app(app) -> FastAPI:
    http_app = FastAPI(title="Katılım", version="0.1.0", docs_url="/docs", redoc_url=None)

    @http_app.get("/health")
    def health() -> dict:
        with app.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "worker": app.worker_id, "channels": sorted(app.channels)}

    for channel in app.channels.values():
        channel.mount(http_app)
    for hook in HTTP_HOOKS:
        hook(app, http_app)
    return http_app


# ---------------------------------------------------------------- files served from storage
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


class _Server:
    def __init__(self, server: uvicorn.Server, task: asyncio.Task):
        self.server = server
        self.task = task

    @property
    def should_exit(self) -> bool:
        return self.server.should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self.server.should_exit = value

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(self.task, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.task.cancel()

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return 0


async def serve_http(app) -> _Server:
    config = uvicorn.Config(create_http_app(app), host=app.settings.http_host, port=app.settings.http_port,
                            log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError(f"the HTTP server did not start on {app.settings.http_host}:{app.settings.http_port}")
        await asyncio.sleep(0.02)
    wrapped = _Server(server, task)
    log.info("HTTP server on http://%s:%s", app.settings.http_host, wrapped.port)
    app.http_port = wrapped.port
    return wrapped


# Features that register HTTP_HOOKS (imported last: they import HTTP_HOOKS from here).
import bot.open311  # noqa: E402,F401  (Open311 GeoReport v2 under /open311/v2/)
