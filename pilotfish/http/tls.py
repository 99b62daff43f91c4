"""TLS for an HTTP listener: its settings (the --tls-* flags), and a handshake the listener starts
itself, on a connection it has already accepted and counted.

A listening socket created with ssl= hands the application nothing until the handshake is done:
connections that never finish one are invisible to every limit (asyncio keeps them 60 s). So a
TLS listener accepts plain TCP, counts the connection against its cap and request deadline from
the first moment, looks at the first bytes (a plain-HTTP request gets a clear 400) and only then
wraps the connection in a TLS layer: a silent connection costs a socket, not a TLS engine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass

from pilotfish.config import ConfigError, env

TLS_HANDSHAKE = 0x16  # the content type of the record every TLS connection begins with
SHUTDOWN_TIMEOUT = 1.0  # seconds we wait for the peer's close_notify before closing anyway


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The server side of a listener: its certificate, and the CA clients must chain to."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


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


def speaks_tls(first: bytes) -> bool:
    """Whether a connection's first bytes open a TLS handshake (not, say, a plain request)."""
    return first[:1] == bytes([TLS_HANDSHAKE])


class TlsLayer(SSLProtocol):
    """asyncio's TLS protocol, telling us whenever the connection ends: asyncio tells the
    application only about connections whose handshake was done."""

    max_size = 32 * 1024  # its read buffer (asyncio's default is 256 KiB per connection)

    def __init__(self, app: asyncio.BaseProtocol, context: ssl.SSLContext, timeout: float,
                 lost: Callable[[], None]) -> None:
        super().__init__(asyncio.get_running_loop(), app, context,
                         None,  # type: ignore[arg-type]  # no waiter: `lost` tells us
                         server_side=True, call_connection_made=True,
                         ssl_handshake_timeout=math.ceil(timeout),  # ours cuts in first
                         ssl_shutdown_timeout=SHUTDOWN_TIMEOUT)
        self._lost = lost

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._lost()

    def feed(self, data: bytes) -> None:
        """Hand the layer bytes already read from the connection (its first flight)."""
        view = memoryview(data)
        while view:
            buffer = self.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            self.buffer_updated(size)
            view = view[size:]
