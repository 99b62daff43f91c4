"""The one small HTTP server every component uses: one listener for an ASGI app, in the process's
event loop, on pilotfish.http.accept's accept loop and pilotfish.http.protocol's limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from pilotfish.config import ConfigError, HostPort
from pilotfish.http.accept import Acceptor, bind
from pilotfish.http.limits import MAX_LINGERING, HttpLimits, Listener
from pilotfish.http.limits import describe as describe_listeners
from pilotfish.http.protocol import protocol_for
from pilotfish.http.tls import TlsSettings
from pilotfish.metrics import Metrics

log = logging.getLogger(__name__)

MIN_CONNECTIONS = 16  # the smallest cap an open-files budget sizes a listener to


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on our accept loop (pilotfish.http.accept), without its own signal handling:
    the pilotfish process owns SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, listener: Listener) -> None:
        super().__init__(config)
        self.listener = listener

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None  # HttpServer.start binds them: errors are its to report
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state)

        acceptor = Acceptor(sockets, create_protocol, self.listener)
        acceptor.start()
        self.servers = [acceptor]  # type: ignore[list-item]
        self.started = True


class HttpServer:
    """Starts and stops one HTTP listener for an ASGI app, inside the process's event loop."""

    def __init__(self, app: Any, listen: HostPort, what: str = "registry API",
                 before_stop: Callable[[], None] | None = None,
                 limits: HttpLimits | None = None, tls: TlsSettings | None = None,
                 metrics: Metrics | None = None) -> None:
        self.limits = limits if limits is not None else HttpLimits()
        protocol, self.listener = protocol_for(self.limits, what)
        if metrics is not None:
            describe_listeners(metrics)
            metrics.collect(self.listener.samples)
        if tls is not None:
            self.listener.tls = tls.context()  # TLS starts after accept (pilotfish.http.tls)
        self.scheme = "https" if tls is not None else "http"
        config = uvicorn.Config(
            app, host=listen.host, port=listen.port, log_level="warning", access_log=False,
            lifespan="off", loop="none", http=protocol, timeout_keep_alive=self.limits.keep_alive,
            timeout_graceful_shutdown=2,  # long-polls (?wait=) must not hold up SIGTERM
        )
        self.server = _EmbeddedServer(config, self.listener)
        self.what = what
        self.address = listen
        self._before_stop = before_stop
        self._task: Any = None

    def share_open_files(self, files: int) -> None:
        """Keep this listener within `files` descriptors: its cap, the refused connections
        it lets drain, and its reserve descriptor."""
        most = max(MIN_CONNECTIONS, files - MAX_LINGERING - 1)
        if most < self.listener.limits.max_connections:
            log.warning("%s: at most %d connections (the open-files limit leaves no more)",
                        self.what, most)
            self.listener.resize(most)

    async def start(self) -> None:
        """Bind and begin serving; afterwards `address` holds the real port."""
        try:
            sockets = bind(self.address.host, self.address.port, self.server.config.backlog)
        except OSError as exc:
            raise ConfigError(f"{self.what}: cannot listen on {self.address}: "
                              f"{exc.strerror or exc}") from None
        self._task = asyncio.create_task(self.server.serve(sockets=sockets))
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"{self.what} failed to start on {self.address}")
            await asyncio.sleep(0.01)
        host, port = sockets[0].getsockname()[:2]
        self.address = HostPort(host, port)
        log.info("%s listening on %s://%s", self.what, self.scheme, self.address)

    async def stop(self) -> None:
        """Finish in-flight requests and close the listener."""
        if self._task is not None:
            if self._before_stop is not None:
                self._before_stop()  # e.g. answer pending long-polls now
            self.server.should_exit = True
            await self._task
            self._task = None
