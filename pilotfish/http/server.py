"""The one small HTTP server every component uses, and the /metrics + /health app they share."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from pilotfish.config import ConfigError, HostPort, env
from pilotfish.http.accept import Acceptor, bind
from pilotfish.http.acl import AccessPolicy, reads_catalog
from pilotfish.http.errors import ApiError
from pilotfish.http.limits import MAX_LINGERING, HttpLimits, Listener
from pilotfish.http.limits import describe as describe_listeners
from pilotfish.http.protocol import protocol_for
from pilotfish.http.responses import respond
from pilotfish.http.tls import server_context
from pilotfish.metrics import Metrics

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, dict[str, Any]]]
"""Returns (healthy, body): 200 with the body when healthy, else 503."""

ASGIApp = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """A listener's certificate and key, and the CA its clients' certificates must chain to."""

    cert: str
    key: str
    client_ca: str | None = None

    def check(self) -> None:
        """Load them once now, so a wrong path or a key not matching is a clear start-up error."""
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key),
                           ("--tls-client-ca", self.client_ca)):
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{flag}: cannot read {path!r}")
        try:
            server_context(self.cert, self.key, None)
        except ssl.SSLError as exc:
            raise ConfigError(f"--tls-cert/--tls-key: {exc.reason or exc}: not a certificate "
                              "and the private key that goes with it (PEM)") from None
        try:
            self.context()
        except ssl.SSLError as exc:
            raise ConfigError(f"--tls-client-ca: {exc.reason or exc}") from None

    def context(self) -> ssl.SSLContext:
        """The server's TLS context."""
        return server_context(self.cert, self.key, self.client_ca)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-cert, --tls-key, --tls-client-ca: TLS for the registry API and the LB's HTTP port."""
    group = parser.add_argument_group("TLS (the registry API and the LB's HTTP port)")
    group.add_argument("--tls-cert", default=env("tls_cert"), metavar="PEM",
                       help="serve HTTPS with this certificate (chain) [PILOTFISH_TLS_CERT]")
    group.add_argument("--tls-key", default=env("tls_key"), metavar="PEM",
                       help="its private key [PILOTFISH_TLS_KEY]")
    group.add_argument("--tls-client-ca", default=env("tls_client_ca"), metavar="PEM",
                       help="require client certificates signed by this CA "
                            "[PILOTFISH_TLS_CLIENT_CA]")


def tls_settings(args: argparse.Namespace) -> TlsSettings | None:
    """The TLS flags as settings (None: plain HTTP); both cert and key or neither."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    client_ca = getattr(args, "tls_client_ca", None)
    if not cert and not key:
        if client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert or not key:
        raise ConfigError("--tls-cert and --tls-key go together")
    settings = TlsSettings(cert, key, client_ca or None)
    settings.check()
    return settings


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


class StatusApp:
    """ASGI app answering GET /metrics (Prometheus text) and /health; the rest goes to `app`.

    `access`: the ACL whose readers see per-instance series on /metrics (acl.reads_catalog).
    """

    def __init__(self, metrics: Metrics, health: Health, app: ASGIApp | None = None,
                 access: AccessPolicy | None = None) -> None:
        self.metrics = metrics
        self.health = health
        self.app = app
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if self.app is not None:
                await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/metrics":
            include_instances = reads_catalog(scope, self.access)
            await respond(send, 200, self.metrics.render(include_instances).encode(),
                          "text/plain; version=0.0.4")
        elif path == "/health":
            healthy, body = self.health()
            await respond(send, 200 if healthy else 503, json.dumps(body).encode())
        elif self.app is not None:
            await self.app(scope, receive, send)
        else:
            await ApiError(404, "not_found", "not found").send(send)
