"""A mesh tunnel: a client connection and the connection it is carried to, each a `Side`
(one socket and what it waits on), and the `Owner` that decides what a tunnel does next."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Protocol


class Carrier(Protocol):
    """What a tunnel asks of the pump that carries it."""

    loop: asyncio.AbstractEventLoop

    def close(self, tunnel: Tunnel, reset: bool) -> None:
        """Close both sockets; the owner hears `ended`."""


def listening(host: str, port: int) -> socket.socket:
    """A non-blocking TCP listener whose accepted sockets inherit TCP_NODELAY (OSError when
    the address cannot be bound)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def accept(listening: socket.socket) -> tuple[socket.socket, Any] | None:
    """One waiting client as a non-blocking socket, or None (OSError: accept failed)."""
    try:
        fd, peer = listening._accept()  # type: ignore[attr-defined]
    except BlockingIOError:
        return None
    client = socket.socket(listening.family, socket.SOCK_STREAM, 0, fd)
    client.setblocking(False)  # (a socket.socket: _ssl holds a weak reference to it)
    return client, peer


class Owner(Protocol):
    """Who decides what a tunnel does next: the inbound port or an outbound route."""

    def handshaken(self, tunnel: Tunnel) -> None:
        """The TLS side finished its handshake."""

    def dialed(self, tunnel: Tunnel, error: OSError | None) -> None:
        """The dialled side connected (None), or could not (the error)."""

    def ended(self, tunnel: Tunnel) -> None:
        """The tunnel closed (once)."""


class Side:
    """One socket of a tunnel and what it waits on; a TLS side also holds the TLS connection
    over that socket (the `_ssl` object Python's SSLSocket wraps), and is its owner: what the
    server-name callback is handed, to switch the connection's context."""

    __slots__ = ("sock", "fd", "tunnel", "peer", "tls", "secure", "stage", "pending", "eof",
                 "shut", "closing", "received", "mask", "want_out", "__weakref__")

    def __init__(self, tunnel: Tunnel, sock: socket.socket, stage: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tunnel: Tunnel | None = tunnel
        self.peer: Side | None = None
        self.tls: Any = None  # _ssl._SSLSocket, once TLS starts
        self.secure = False  # tls is set
        self.stage = stage  # "connect", "handshake", "wait" (nothing read yet), "open"
        self.pending: bytes | None = None  # bytes for this socket that did not fit
        self.eof = False  # read its EOF (or close_notify)
        self.shut = False  # our write side toward it is closed
        self.closing = False  # a close_notify waits for room to be sent
        self.received = 0
        self.mask = -1
        self.want_out = False  # the handshake (or a TLS read) waits for room to write

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS context of the connection (the server-name callback switches it)."""
        return self.tls.context  # type: ignore[no-any-return]

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self.tls.context = context


class Tunnel:
    """A client connection and the connection it is carried to; an outbound one is an LB
    `Link` (the route's gate dials through it)."""

    __slots__ = ("pump", "owner", "client", "server", "closed", "born", "idle", "seen",
                 "backend", "tried", "peername", "sockname", "identity", "destination",
                 "dial_backend", "__weakref__")

    def __init__(self, pump: Carrier, owner: Owner, peername: Any) -> None:
        self.pump = pump
        self.owner = owner
        self.client: Side | None = None
        self.server: Side | None = None
        self.closed = False
        self.born = pump.loop.time()
        self.idle = 0
        self.seen = 0
        self.backend: Any = None
        self.dial_backend: Any = None
        self.tried: list[Any] | tuple[()] = ()
        self.peername = peername
        self.sockname: Any = None
        self.identity: str | None = None  # the peer's service, once verified
        self.destination: str | None = None  # the service it reaches

    def moved(self) -> tuple[int, int] | None:
        """Bytes read from the client and from the other side, once both are up."""
        if self.server is None or self.client is None:
            return None
        return (self.client.received, self.server.received)

    def secure_side(self) -> Side | None:
        """Its TLS side."""
        for side in (self.client, self.server):
            if side is not None and side.secure:
                return side
        return None

    def close(self) -> None:
        """Close both sockets (the pool's drain, the idle sweep)."""
        self.pump.close(self, reset=False)

    def abort(self) -> None:
        """Close both sockets now, with a reset to the client."""
        self.pump.close(self, reset=True)
