"""Serves the registry API with uvicorn inside the shared event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import uvicorn

from pilotfish.config import HostPort

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the pilotfish process owns SIGTERM/SIGINT."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class ApiServer:
    """Starts and stops one HTTP listener for an ASGI app."""

    def __init__(self, app: Any, listen: HostPort, what: str = "registry API",
                 before_stop: Callable[[], None] | None = None) -> None:
        config = uvicorn.Config(
            app, host=listen.host, port=listen.port, log_level="warning", access_log=False,
            lifespan="off", loop="none", http="httptools", timeout_keep_alive=75,
            timeout_graceful_shutdown=2,  # long-polls (?wait=) must not hold up SIGTERM
        )
        self.server = _EmbeddedServer(config)
        self.what = what
        self.address = listen
        self._before_stop = before_stop
        self._task: Any = None

    async def start(self) -> None:
        """Bind and begin serving; afterwards `address` holds the real port."""
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"{self.what} failed to start on {self.address}")
            await asyncio.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = HostPort(host, port)
        log.info("%s listening on http://%s", self.what, self.address)

    async def stop(self) -> None:
        """Finish in-flight requests and close the listener."""
        if self._task is not None:
            if self._before_stop is not None:
                self._before_stop()  # e.g. answer pending long-polls now
            self.server.should_exit = True
            await self._task
            self._task = None
