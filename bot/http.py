"""The HTTP server (FastAPI + uvicorn): health, channel webhooks and APIs.

Limits on every request (settings HTTP_READ_TIMEOUT, HTTP_MAX_CONNECTIONS, HTTP_KEEP_ALIVE_TIMEOUT):
- a connection must complete a request's headers within HTTP_READ_TIMEOUT of opening (or of its
  previous response), else it is closed (`_Protocol`: a client trickling headers holds nothing);
- a request's body must arrive within HTTP_READ_TIMEOUT of its headers, else 408 and the
  connection is closed (`RequestLimits`, which wraps the ASGI `receive`);
- a client that goes away before its body is complete is logged in one line (no traceback);
- uvicorn answers 503 beyond HTTP_MAX_CONNECTIONS open connections (limit_concurrency) and closes
  idle keep-alive connections after HTTP_KEEP_ALIVE_TIMEOUT.
/docs and /openapi.json are served only when Settings.docs_enabled (HTTP_DOCS, KATILIM_ENV).

Every file served from storage goes through handlers/files.py's `stored_file`.
"""
from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from storage.health import probe_database, probe_media

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 5.0  # seconds each /health probe may take (a locked database answers "fail")


def create_http_app(app) -> FastAPI:
    docs = app.settings.docs_enabled
    http_app = FastAPI(title="Katılım", version="0.1.0", docs_url="/docs" if docs else None, redoc_url=None,
                       openapi_url="/openapi.json" if docs else None)

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
    for feature in app.features:  # bot/features.py: Open311 ...
        for add_routes in feature.http:
            add_routes(app, http_app)
    http_app.add_middleware(RequestLimits, read_timeout=app.settings.http_read_timeout.total_seconds())
    return http_app


# ---------------------------------------------------------------- limits on every request
class _BodyTimeout(Exception):
    pass


class RequestLimits:
    """ASGI middleware: the request body must arrive within `read_timeout` seconds of the headers
    (else 408, connection closed); a client that disconnects before its body is complete is one
    log line, not a traceback."""

    def __init__(self, app, read_timeout: float) -> None:
        self.app = app
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        body_done = started = False

        async def timed_receive():
            nonlocal body_done
            if body_done:  # after the body: only the disconnect is left to wait for, as long as it takes
                return await receive()
            try:
                async with asyncio.timeout(deadline - loop.time()):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except _BodyTimeout:
            log.warning("HTTP %s %s from %s: the body did not arrive within %gs (408, connection closed)",
                        scope["method"], scope["path"], _client(scope), self.read_timeout)
            if not started:
                response = JSONResponse({"detail": f"the request body did not arrive within {self.read_timeout:g}s"},
                                        status_code=408, headers={"Connection": "close"})
                await response(scope, receive, send)
        except ClientDisconnect:
            log.info("HTTP %s %s from %s: the client disconnected before its body was complete",
                     scope["method"], scope["path"], _client(scope))


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers: a connection that has
    not completed them `read_timeout` seconds after it opened (or after its last response) is
    closed. (uvicorn's own keep-alive timer restarts at every byte received.)"""

    read_timeout = 15.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.read_timeout, self._headers_late, self.cycle)

    def _headers_late(self, cycle) -> None:
        """Close the connection unless a request began since the timer was armed."""
        if self.transport.is_closing() or self.cycle is not cycle:
            return
        if cycle is not None and not cycle.response_complete:
            return
        log.info("HTTP connection from %s: no complete request headers within %gs, closed",
                 self.client[0] if self.client else "?", self.read_timeout)
        self.transport.close()


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
    settings = app.settings
    protocol = type("KatilimHTTP", (_Protocol,), {"read_timeout": settings.http_read_timeout.total_seconds()})
    config = uvicorn.Config(create_http_app(app), host=settings.http_host, port=settings.http_port,
                            log_level="warning", lifespan="off", access_log=False, http=protocol,
                            limit_concurrency=settings.http_max_connections,
                            timeout_keep_alive=settings.http_keep_alive_timeout.total_seconds(),
                            server_header=False)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind; in a task that would end the loop
            raise OSError("the address is in use or cannot be bound") from None

    task = asyncio.create_task(serve())
    while not server.started:
        if task.done():
            from bot.app import StartupError

            try:
                task.result()
                reason = "it stopped at start-up"
            except OSError as exc:
                reason = str(exc)
            raise StartupError(f"HTTP_HOST={settings.http_host} HTTP_PORT={settings.http_port}: cannot listen "
                               f"there ({reason}); stop what uses it or choose another HTTP_PORT")
        await asyncio.sleep(0.02)
    wrapped = _Server(server, task)
    log.info("HTTP server on http://%s:%s", settings.http_host, wrapped.port)
    app.http_port = wrapped.port
    return wrapped
