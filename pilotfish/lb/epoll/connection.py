"""A connection on the epoll engine: the client's and the backend's raw sockets."""

from __future__ import annotations

import _socket
import socket
from typing import Any, Protocol

from pilotfish.lb.engine import Gate
from pilotfish.lb.pool import Backend
from pilotfish.lb.refuse import reset_on_close

DONTWAIT = socket.MSG_DONTWAIT


class Carrier(Protocol):
    """What a connection asks of the epoll set that carries it (the Poller)."""

    def dial(self, connection: EpollConnection, backend: Backend, timeout: float) -> None:
        """Start a non-blocking connect of the connection's backend side."""

    def drop(self, connection: EpollConnection) -> None:
        """Close the connection's sockets and settle its counters (once)."""


class EpollSide:
    """One socket of a proxied connection, with what the edge-triggered events told us."""

    __slots__ = ("sock", "fd", "connection", "peer", "upstream", "readable", "hup", "eof",
                 "shut", "pending", "watch_out", "received")

    def __init__(self, connection: EpollConnection, sock: _socket.socket, upstream: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.connection: EpollConnection | None = connection
        self.peer: EpollSide | None = None
        self.upstream = upstream  # the backend's socket
        self.readable = False  # an IN edge came and reading has not hit "no more" since
        self.hup = False  # the peer shut down its write side: EOF follows the data
        self.eof = False  # read EOF (this side's direction is done)
        self.shut = False  # our write side toward it is shut down
        self.pending = b""  # bytes for this socket that did not fit in its send buffer
        self.watch_out = upstream  # watched for OUT (backends from the start, for connect)
        self.received = 0  # bytes read from it (and written to the peer)


class EpollConnection:
    """A client connection and its backend connection, as raw sockets (a `Link`)."""

    __slots__ = ("gate", "poller", "client", "server", "dialing", "dial_backend",
                 "backend", "closed", "peername", "sockname", "tried", "idle", "seen")

    def __init__(self, gate: Gate, poller: Carrier, sock: _socket.socket, peername: Any) -> None:
        self.gate = gate
        self.poller = poller
        self.client = EpollSide(self, sock, False)
        self.server: EpollSide | None = None
        self.dialing: EpollSide | None = None  # the backend socket while its connect runs
        self.dial_backend: Backend | None = None
        self.backend: Backend | None = None
        self.closed = False
        self.peername = peername
        self.sockname: Any = None
        self.tried: list[Backend] | tuple[()] = ()
        self.idle = 0
        self.seen = 0

    def learn_addresses(self) -> None:
        """The peer's address came with accept; the listener's is asked only for PROXY."""
        if self.gate.route.proxy_protocol:
            self.sockname = self.client.sock.getsockname()

    def dial(self, backend: Backend, timeout: float) -> None:
        """Start a non-blocking connect; the poller reports it to the gate."""
        self.poller.dial(self, backend, timeout)

    def refuse(self) -> None:
        """Reset the client: it was not served."""
        reset_on_close(self.client.sock)
        self.poller.drop(self)

    def moved(self) -> tuple[int, int] | None:
        """Bytes read from the client and from the backend, once the backend is up."""
        server = self.server
        return None if server is None else (self.client.received, server.received)

    def close(self) -> None:
        """Close both sockets, after one last try at sending what is queued."""
        for side in (self.client, self.server):
            if side is not None and side.pending:
                try:
                    side.sock.send(side.pending, DONTWAIT)
                except OSError:
                    pass
        self.poller.drop(self)

    def abort(self) -> None:
        """Close both sockets now."""
        self.poller.drop(self)

