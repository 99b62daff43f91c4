"""TLS started by the HTTP listener itself, on a connection it has already accepted and counted.

A listening socket created with ssl= hands the application nothing until the handshake is done:
connections that never finish one are invisible to every limit (asyncio keeps them 60 s). So a
TLS listener accepts plain TCP, counts the connection against its cap and request deadline from
the first moment, looks at the first bytes (a plain-HTTP request gets a clear 400) and only then
wraps the connection in a TLS layer: a silent connection costs a socket, not a TLS engine.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable

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
