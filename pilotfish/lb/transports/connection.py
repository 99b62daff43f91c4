"""One proxied connection over asyncio transports: bytes both ways, half-close,
backpressure, and its backend connect."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from pilotfish.lb.engine import Gate
from pilotfish.lb.pool import Backend
from pilotfish.lb.refuse import refuse_now
from pilotfish.lb.transports.connect import Attempt

HOLD_LIMIT = 64 << 10  # bytes held from a client while its backend connect runs
EOF_RETRY = 0.005  # seconds between looks at a write buffer that must drain before a half-close


def shutdown_write(transport: asyncio.Transport) -> None:
    """Half-close: shut down the socket's write side (the peer reads EOF, can still send).

    Not `transport.write_eof()`: uvloop 0.23 aborted the process with "double free or
    corruption" when write_eof() met connection churn. The caller makes sure the transport's
    write buffer is empty, so nothing queued is lost.
    """
    pseudo = transport.get_extra_info("socket")
    if pseudo is None:
        return
    sock = socket.socket(pseudo.family, pseudo.type, 0, pseudo.fileno())
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the peer has gone already; connection_lost follows
    finally:
        sock.detach()


class TransportSide(asyncio.Protocol):
    """One of a connection's two sockets; what it reads is written to the other."""

    __slots__ = ("connection", "transport", "peer", "eof", "shut", "upstream", "received",
                 "write")

    def __init__(self, connection: TransportConnection,
                 peer: TransportSide | None = None) -> None:
        self.connection = connection
        self.upstream = peer is not None  # the backend's socket (the client's has no peer yet)
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.eof = False  # this socket's reader reached EOF
        self.shut = False  # this socket's write side is shut down
        self.received = 0  # bytes read from this socket (and written to the peer)
        self.write: Callable[[bytes], None] = self._hold if peer is None else \
            peer.transport.write  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        connection = self.connection
        transport.set_write_buffer_limits(connection.gate.settings.high_water)
        if not self.upstream:
            connection.accepted(transport)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.write(data)  # the peer transport's write, bound once: this is the hot path

    def _hold(self, data: bytes) -> None:
        """A client that spoke before its backend connection is up: keep it until then.

        Reading goes on up to HOLD_LIMIT bytes: pausing for the first request would cost
        two epoll changes per connection.
        """
        self.connection.pending.append(data)
        if self.received >= HOLD_LIMIT:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None:
            peer.shutdown()
        return True  # keep our write side open: the half-close goes on

    def shutdown(self) -> None:
        """Shut this side's write half once what is queued for it has been sent."""
        transport = self.transport
        if self.shut or transport is None or transport.is_closing():
            return
        if self.eof:  # this socket had ended its direction already: both are done now
            self.shut = True
            self.connection.close()  # a close sends what is queued, then the FIN
            return
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(EOF_RETRY, self.shutdown)
            return
        self.shut = True
        shutdown_write(transport)

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.eof:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.lost(self, exc)


class TransportConnection:
    """A client connection and (once connected) its backend connection (a `Link`)."""

    __slots__ = ("gate", "client", "server", "backend", "closed", "peername",
                 "sockname", "attempt", "tried", "idle", "seen", "pending")

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.client = TransportSide(self)
        self.server: TransportSide | None = None
        self.backend: Backend | None = None
        self.closed = False
        self.peername: Any = None  # read only when needed (hashing, PROXY header)
        self.sockname: Any = None
        self.attempt: Attempt[TransportSide] | None = None  # the backend connect under way
        self.tried: list[Backend] | tuple[()] = ()  # backends whose connect failed
        self.idle = 0  # idle sweeps in a row without data
        self.seen = 0  # bytes moved as of the last idle sweep
        self.pending: list[bytes] = []

    def learn_addresses(self) -> None:
        """Read the client's and the listener's addresses (for hashing, the PROXY header)."""
        transport = self.client.transport
        if transport is not None:
            self.peername = transport.get_extra_info("peername")
            self.sockname = transport.get_extra_info("sockname")

    def dial(self, backend: Backend, timeout: float) -> None:
        """Start connecting to `backend` (an Attempt: callbacks and one timer, no Task)."""
        server = TransportSide(self, self.client)  # the backend may speak first
        attempt = Attempt(self, backend, server, asyncio.get_running_loop(), timeout)
        self.attempt = attempt  # before step(): a connect that fails at once retries from here
        attempt.step()

    def dialed(self, attempt: Attempt[TransportSide]) -> None:
        """The backend connection is up: tell the gate, send what goes first, join the sides."""
        self.attempt = None
        server, backend = attempt.server, attempt.backend
        transport = server.transport
        alive = transport is not None and not transport.is_closing()
        first = self.gate.connected(self, backend, alive)
        if first is None:
            if transport is not None:
                transport.close()
            return
        if first:
            transport.write(first)  # type: ignore[union-attr]
        self.attach(server, backend)

    def dial_failed(self, attempt: Attempt[TransportSide], error: BaseException) -> None:
        """The connect failed (refused, timed out, the client left): the gate retries."""
        self.attempt = None
        transport = attempt.server.transport
        if self.closed and transport is not None:
            transport.abort()  # the client left while we connected
        self.gate.failed(self, attempt.backend, error)

    def refuse(self) -> None:
        """Reset the client: it was not served."""
        if self.client.transport is not None:
            refuse_now(self.client.transport)

    def moved(self) -> tuple[int, int] | None:
        """Bytes read from the client and from the backend, once the backend is up."""
        server = self.server
        return None if server is None else (self.client.received, server.received)

    def accepted(self, transport: asyncio.Transport) -> None:
        """A client connected: hold its bytes until a backend is connected, or refuse it."""
        transport.pause_reading()
        if not self.gate.admit(self):
            self.closed = True
            refuse_now(transport)

    def attach(self, server: TransportSide, backend: Backend) -> None:
        """The backend connection is up: join the two sides and let the client's bytes flow."""
        self.server = server
        self.backend = backend
        self.client.peer = server
        self.client.write = server.transport.write  # type: ignore[union-attr]
        backend.connections.add(self)
        if self.pending:
            server.transport.write(b"".join(self.pending))  # type: ignore[union-attr]
            self.pending = []
        if self.client.eof:
            server.shutdown()
        else:
            self.client.transport.resume_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        """Close both sockets (queued bytes are still sent)."""
        if self.client.transport is not None:
            self.client.transport.close()
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()

    def abort(self) -> None:
        """Reset both sockets now (shutdown timeout)."""
        if self.client.transport is not None:
            self.client.transport.abort()
        if self.server is not None and self.server.transport is not None:
            self.server.transport.abort()

    def lost(self, side: TransportSide, exc: Exception | None) -> None:
        """One socket closed: close the other (reset it too if this one was reset)."""
        peer = side.peer
        if exc is not None:
            resets = self.gate.stats.resets
            resets[side.upstream] += 1
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if not self.closed and (side is self.client or peer is not None):
            self.closed = True
            self.gate.finished(self)
            attempt = self.attempt
            if attempt is not None:
                attempt.cancel()
