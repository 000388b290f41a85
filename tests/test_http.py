"""Limits on every door of the HTTP server, against a real server started by the app's own
`serve_http` (uvicorn on a free port) and raw sockets: a body trickling in gets 408, headers
trickling in are cut, a client that disconnects mid-body is one log line (not a traceback), the
connection limit answers 503, idle keep-alive connections are closed; and /docs and
/openapi.json follow KATILIM_ENV and HTTP_DOCS."""
from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import pytest

from bot.http import create_http_app, serve_http
from bot.settings import SettingsError

POST_HEAD = (b"POST /open311/v2/requests.json HTTP/1.1\r\nHost: katilim\r\n"
             b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n")


@pytest.fixture
async def served(make_app, sqlite_url):
    """start(**settings) → the running server (stopped at the end)."""
    servers = []

    async def start(**settings):
        app = make_app(database_url=sqlite_url, **settings)
        server = await serve_http(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.should_exit = True
        await server.wait_closed()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(0.1)
    return sock


def read_until_closed(sock: socket.socket, *, trickle: bytes = b"", every: float = 0.2,
                      limit: float = 10) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when it closed, writing one
    byte of `trickle` every `every` seconds meanwhile (a slow client)."""
    started, received, sent = time.monotonic(), b"", 0
    next_write = started
    while time.monotonic() - started < limit:
        if trickle and time.monotonic() >= next_write:
            try:
                sock.sendall(trickle[sent % len(trickle):][:1])
            except OSError:  # the server closed its side
                pass
            sent += 1
            next_write += every
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


async def test_a_body_trickling_in_gets_408_and_the_connection_closes(served, figure):
    server = await served(http_read_timeout="1s")
    sock = await asyncio.to_thread(connect, server.port)
    try:
        sock.sendall(POST_HEAD)
        received, took = await asyncio.to_thread(read_until_closed, sock, trickle=b"description=x")
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert b"connection: close" in received.lower()
    assert took < 3, took
    figure(f"HTTP: a body trickling 5 bytes/s got 408 and was closed after {took:.1f} s (HTTP_READ_TIMEOUT=1s)")


async def test_headers_trickling_in_or_never_sent_are_cut(served, figure):
    server = await served(http_read_timeout="1s")
    results = []
    for trickle in (b"X-Slow: " + b"a" * 100, b""):
        sock = await asyncio.to_thread(connect, server.port)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\n" if trickle else b"")
            results.append(await asyncio.to_thread(read_until_closed, sock, trickle=trickle))
        finally:
            sock.close()
    for received, took in results:
        assert received == b"" and took < 3, (received, took)
    figure(f"HTTP: headers trickling in closed after {results[0][1]:.1f} s, a silent connection after "
           f"{results[1][1]:.1f} s (HTTP_READ_TIMEOUT=1s)")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        health = await c.get("/health")  # a real client is not affected
    assert health.status_code == 200 and "server" not in health.headers


async def test_a_client_that_disconnects_mid_body_is_one_log_line(served, caplog, capfd):
    server = await served()
    caplog.set_level(logging.INFO)
    capfd.readouterr()

    def abort() -> None:
        sock = connect(server.port)
        sock.sendall(POST_HEAD + b"api_key=k311_abc&service_code=ro")
        time.sleep(0.3)
        sock.close()

    await asyncio.to_thread(abort)
    for _ in range(50):
        if any("disconnected" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Exception in ASGI application" not in stderr, stderr
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and "/open311/v2/requests.json" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None, [r.getMessage() for r in caplog.records]
    assert "disconnected before its body was complete" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_beyond_the_connection_limit_new_requests_get_503(served):
    server = await served(http_max_connections=4, http_read_timeout="30s")
    idle = [await asyncio.to_thread(connect, server.port) for _ in range(3)]
    await asyncio.sleep(0.2)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
            refused = await c.get("/health")
    finally:
        for sock in idle:
            sock.close()
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
        served_again = await c.get("/health")
    assert refused.status_code == 503
    assert served_again.status_code == 200


async def test_an_idle_keep_alive_connection_is_closed(served):
    server = await served(http_keep_alive_timeout="1s", http_read_timeout="30s")
    sock = await asyncio.to_thread(connect, server.port)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: katilim\r\n\r\n")
        received, took = await asyncio.to_thread(read_until_closed, sock)
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in received
    assert 0.8 < took < 2.5, took


# ---------------------------------------------------------------- /docs and /openapi.json
@pytest.mark.parametrize("env, docs, served_docs", [
    ("development", "auto", True), ("production", "auto", False), ("production", "on", True),
    ("development", "off", False)])
async def test_the_api_documentation_follows_the_environment(make_app, sqlite_url, env, docs, served_docs):
    app = make_app(database_url=sqlite_url, katilim_env=env, http_docs=docs)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_http_app(app)),
                                 base_url="http://test") as c:
        document, page = await c.get("/openapi.json"), await c.get("/docs")
        api = await c.get("/open311/v2/services.json")
    expected = 200 if served_docs else 404
    assert (document.status_code, page.status_code) == (expected, expected)
    assert api.status_code == 200  # the API itself is served either way


def test_environment_settings_are_validated(make_settings):
    assert make_settings().katilim_env == "development" and make_settings().docs_enabled
    assert not make_settings(katilim_env="Production").docs_enabled
    with pytest.raises(SettingsError, match="KATILIM_ENV"):
        make_settings(katilim_env="staging")
    with pytest.raises(SettingsError, match="HTTP_DOCS"):
        make_settings(http_docs="maybe")
    with pytest.raises(SettingsError, match="HTTP_READ_TIMEOUT"):
        make_settings(http_read_timeout="0.1s")
