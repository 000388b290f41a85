"""The HTTP server (FastAPI + uvicorn): health, channel webhooks and APIs."""
from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from storage.health import probe_database, probe_media

log = logging.getLogger(__name__)

# Feature routers (Open311 ...) register a function(app, http_app) here.
HTTP_HOOKS: list = []
HEALTH_TIMEOUT = 5.0  # seconds each /health probe may take (a locked database answers "fail")


def create_http_app(app) -> FastAPI:
    http_app = FastAPI(title="Katılım", version="0.1.0", docs_url="/docs", redoc_url=None)

    @http_app.get("/health")
    async def health() -> JSONResponse:
        """200 when the database accepts a write and MEDIA_DIR can be written, else 503 with the
        part that failed: {"status": "fail", "database": "fail: disk full", "media": "ok", ...}."""
        parts = {"database": (probe_database, app.db, app.worker_id), "media": (probe_media, app.settings.media_dir)}
        found = {}
        for part, (probe, *args) in parts.items():
            try:
                found[part] = await asyncio.wait_for(asyncio.to_thread(probe, *args), HEALTH_TIMEOUT)
            except asyncio.TimeoutError:
                found[part] = f"fail: no answer within {HEALTH_TIMEOUT:.0f}s"
        ok = all(value == "ok" for value in found.values())
        body = {"status": "ok" if ok else "fail", **found, "worker": app.worker_id, "channels": sorted(app.channels)}
        return JSONResponse(body, status_code=200 if ok else 503)

    for channel in app.channels.values():
        channel.mount(http_app)
    for hook in HTTP_HOOKS:
        hook(app, http_app)
    return http_app


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
