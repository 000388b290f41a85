"""What the local fake servers share: a Starlette app under uvicorn in a background thread on a
free 127.0.0.1 port, a context manager, and waiting for a condition on what the server saw."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, Callable

import uvicorn


class LocalServer(ABC):
    name = "fake"

    def __init__(self) -> None:
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what a server provides
    @abstractmethod
    def _build_app(self) -> Any:
        """Each fake server builds its own Starlette app."""

    def _uvicorn_options(self) -> dict[str, Any]:
        return {}

    async def _on_loop(self) -> None:  # noqa: B027 - a hook: doing nothing is the default
        """Runs in the server's loop before it serves (create loop-bound primitives here)."""

    def _before_stop(self) -> None:  # noqa: B027 - a hook: doing nothing is the default
        """Called from the test's thread before the server is told to exit."""

    def dump(self) -> str:
        return ""

    # -- lifecycle
    @property
    def root(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self, timeout: float = 10.0):
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self._build_app(), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, **self._uvicorn_options())
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"{self.name}-{self._port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} failed to start")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._loop = loop
            await self._on_loop()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            loop.run_until_complete(main())
        finally:
            sock.close()
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None or self._server is None:
            return
        self._before_stop()
        self._server.should_exit = True
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- waiting for what the server saw
    def wait_for(self, predicate: Callable[[Any], Any], timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while (result := self._met(predicate, deadline, timeout)) is None:
            time.sleep(0.01)
        return result

    async def async_wait_for(self, predicate: Callable[[Any], Any], timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while (result := self._met(predicate, deadline, timeout)) is None:
            await asyncio.sleep(0.01)
        return result

    def _met(self, predicate: Callable[[Any], Any], deadline: float, timeout: float) -> Any:
        """The predicate's result when true, None while there is time left to wait; an error after."""
        result = predicate(self)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s\n{self.dump()}")
        return None
