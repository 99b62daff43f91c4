"""The epoll engine's heart: one edge-triggered epoll set that the event loop watches as a
single reader, and what its events do (accept, connect, move the bytes, close).

Why it exists: through asyncio transports a new connection costs about 26 syscalls (uvloop
asks every transport for getsockname/getpeername, sets TCP_NODELAY, checks each poll handle)
and a dozen Python objects, which kept new connections/s well below HAProxy's. Here the event
loop watches one file descriptor, the epoll set; every listening and proxied socket lives in
it. A connection costs accept4, socket, setsockopt (TCP_NODELAY; accepted sockets inherit it
from the listener), connect, two epoll_ctl, the reads and writes, a shutdown and two close.
Bytes the other side has no room for stay in the kernel (backpressure by not reading); a
backend's last data and its FIN leave in one segment (MSG_MORE).
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import select
import socket
from collections import deque
from typing import Protocol

from pilotfish.lb.epoll.connection import DONTWAIT, EpollConnection, EpollSide
from pilotfish.lb.pool import Backend

log = logging.getLogger(__name__)

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
RDHUP, ET = select.EPOLLRDHUP, select.EPOLLET
READ_MASK = IN | RDHUP | ET  # what a client socket is watched for until a write blocks
FULL_MASK = IN | OUT | RDHUP | ET  # a backend socket (OUT tells the connect is done)
ENDED = RDHUP | HUP
MORE = socket.MSG_DONTWAIT | socket.MSG_MORE  # hold the segment: the FIN follows at once
CHUNK = 256 << 10  # bytes read per recv
BATCH = 512  # epoll events handled per wake-up
STREAM = socket.SOCK_STREAM


class Acceptor(Protocol):
    """A listening socket's owner in the set: told when clients wait to be accepted."""

    def accept_ready(self, fd: int) -> None:
        """Accept every waiting client on `fd` (up to a batch)."""


class Poller:
    """The balancer's epoll set, watched by the event loop as one reader; moves the bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.sides: dict[int, EpollSide] = {}
        self.listeners: dict[int, Acceptor] = {}
        self.doomed: list[_socket.socket] = []  # closed after the batch: fds must not be reused
        self.batch = False
        self.dials: deque[tuple[float, EpollSide]] = deque()  # connect deadlines, in order
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = memoryview(bytearray(CHUNK))
        loop.add_reader(self.epoll.fileno(), self.run)

    def close(self) -> None:
        """Stop watching; the connections are gone by now (the balancer aborted them)."""
        self.loop.remove_reader(self.epoll.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.epoll.close()

    # -- the loop's reader -------------------------------------------------------------

    def run(self) -> None:
        """Handle what the epoll set has ready (the loop calls this when it is readable)."""
        sides = self.sides
        accepting: list[int] = []
        self.batch = True
        try:
            for fd, mask in self.epoll.poll(0, BATCH):
                side = sides.get(fd)
                if side is None:
                    if fd in self.listeners:
                        accepting.append(fd)  # after the rest: closes free places first
                    continue
                try:
                    self.event(side, mask)
                except Exception:  # a bug must cost one connection, not the batch
                    log.exception("lb: error on a connection; closing it")
                    connection = side.connection
                    if connection is not None:
                        self.drop(connection)
            for fd in accepting:
                listener = self.listeners.get(fd)
                if listener is not None:
                    listener.accept_ready(fd)
        finally:
            self.batch = False
            doomed = self.doomed
            if doomed:
                for sock in doomed:
                    sock.close()
                doomed.clear()

    def event(self, side: EpollSide, mask: int) -> None:
        """One socket's readiness: connect done, room to write, bytes or EOF to read."""
        connection = side.connection
        if connection is None:
            return
        if side is connection.dialing:
            if mask & (ERR | HUP):
                code = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.dial_failed(side, OSError(code or errno.ECONNRESET,
                                               os.strerror(code or errno.ECONNRESET)))
                return
            if not mask & OUT:
                return
            self.dialed(connection, side)
            if connection.closed:
                return
        elif mask & ERR:
            self.reset(side)
            return
        if mask & OUT and side.pending:
            self.flush(side)
            if connection.closed:
                return
        if mask & (IN | ENDED):
            side.readable = True
            if mask & ENDED:
                side.hup = True
            peer = side.peer
            if peer is not None and not peer.pending:
                self.pump(side, peer)

    # -- moving bytes ------------------------------------------------------------------

    def pump(self, src: EpollSide, dst: EpollSide) -> None:
        """Read `src` and write it to `dst` until `src` has no more or `dst` has no room."""
        recv_into = src.sock.recv_into
        buffer = self.buffer
        while True:
            try:
                count = recv_into(buffer, CHUNK, DONTWAIT)
            except BlockingIOError:
                src.readable = False
                return
            except OSError:
                self.reset(src)
                return
            if not count:
                src.readable = False
                self.ended(src, dst)
                return
            eof = False
            if count < CHUNK:
                src.readable = False
                if src.hup:  # its EOF waits behind the data: take it, so the FIN rides along
                    try:
                        more = recv_into(buffer[count:], CHUNK - count, DONTWAIT)
                    except BlockingIOError:
                        more = -1
                    except OSError:
                        self.reset(src)
                        return
                    if more == 0:
                        eof = True
                    elif more > 0:
                        count += more
                        src.readable = True
            src.received += count
            data = buffer[:count]
            try:
                sent = dst.sock.send(data, MORE if eof else DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.reset(dst)
                return
            if sent != count:
                dst.pending = bytes(data[sent:])
                src.eof = eof
                self.want_out(dst)
                return
            if eof:
                self.ended(src, dst)
                return
            if not src.readable:
                return

    def want_out(self, side: EpollSide) -> None:
        """A write did not fit: hear when the socket has room again."""
        if not side.watch_out:
            side.watch_out = True
            self.epoll.modify(side.fd, FULL_MASK)

    def flush(self, side: EpollSide) -> None:
        """Room again: send what is queued, then pass on the EOF or read the peer again."""
        pending = side.pending
        try:
            sent = side.sock.send(pending, DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            self.reset(side)
            return
        if sent != len(pending):
            side.pending = pending[sent:]
            return
        side.pending = b""
        peer = side.peer
        if peer is None:
            return
        if peer.eof:
            self.ended(peer, side)
        elif peer.readable:
            self.pump(peer, side)

    def ended(self, src: EpollSide, dst: EpollSide) -> None:
        """`src` read EOF and all it sent is written: shut `dst`'s write side, or close both
        once the other direction is done too (close sends what is held, then the FIN)."""
        src.eof = True
        if dst.eof and not src.pending:
            connection = src.connection
            if connection is not None:
                self.drop(connection)
            return
        if not dst.shut:
            dst.shut = True
            try:
                dst.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the peer has gone; its event follows

    def reset(self, side: EpollSide) -> None:
        """A socket failed (reset): count it, close both."""
        connection = side.connection
        if connection is None:
            return
        if not connection.closed:
            connection.gate.stats.resets[side.upstream] += 1
        self.drop(connection)

    # -- connecting --------------------------------------------------------------------

    def dial(self, connection: EpollConnection, backend: Backend, timeout: float) -> None:
        """Start a non-blocking connect to `backend`, with a deadline."""
        family = socket.AF_INET6 if ":" in backend.address else socket.AF_INET
        try:
            sock = _socket.socket(family, STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            connection.gate.failed(connection, backend, exc)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((backend.address, backend.port))
        except OSError as exc:
            code = exc.errno or errno.EINVAL
        if code and code != errno.EINPROGRESS:
            sock.close()
            connection.gate.failed(connection, backend, OSError(code, os.strerror(code)))
            return
        side = EpollSide(connection, sock, True)
        connection.dialing = side
        connection.dial_backend = backend
        self.sides[side.fd] = side
        self.epoll.register(side.fd, FULL_MASK)
        deadline = self.loop.time() + timeout
        self.dials.append((deadline, side))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self.expire)

    def expire(self) -> None:
        """Connect deadlines that passed: those connects failed (timed out)."""
        self.timer = None
        dials = self.dials
        now = self.loop.time()
        while dials and dials[0][0] <= now:
            side = dials.popleft()[1]
            connection = side.connection
            if connection is not None and connection.dialing is side:
                self.dial_failed(side, TimeoutError(errno.ETIMEDOUT, "connect timed out"))
        if dials:
            self.timer = self.loop.call_at(dials[0][0], self.expire)

    def dial_failed(self, side: EpollSide, error: OSError) -> None:
        """Drop the half-made backend socket; the gate retries or refuses the client."""
        connection = side.connection
        assert connection is not None and connection.dial_backend is not None
        backend = connection.dial_backend
        connection.dialing = connection.dial_backend = None
        self.discard(side)
        connection.gate.failed(connection, backend, error)

    def dialed(self, connection: EpollConnection, side: EpollSide) -> None:
        """Connected: join the sockets; the PROXY header, then the client's bytes, go first."""
        backend = connection.dial_backend
        assert backend is not None
        connection.dialing = connection.dial_backend = None
        first = connection.gate.connected(connection, backend)
        if first is None:
            self.discard(side)
            return
        client = connection.client
        connection.server = side
        connection.backend = backend
        backend.connections.add(connection)
        client.peer = side
        side.peer = client
        if first:
            try:
                sent = side.sock.send(first, DONTWAIT)
            except OSError:
                sent = 0
            if sent != len(first):
                side.pending = first[sent:]
                return
        if client.readable:
            self.pump(client, side)

    # -- sockets in and out of the set -------------------------------------------------

    def adopt(self, side: EpollSide) -> None:
        """Watch an accepted client socket."""
        self.sides[side.fd] = side
        self.epoll.register(side.fd, READ_MASK)

    def discard(self, side: EpollSide) -> None:
        """Close one socket (after the batch, while one is being handled)."""
        side.connection = None
        side.peer = None
        if self.sides.get(side.fd) is side:
            del self.sides[side.fd]
        if self.batch:
            self.doomed.append(side.sock)
        else:
            side.sock.close()

    def drop(self, connection: EpollConnection) -> None:
        """Close a connection's sockets and settle its counters (once)."""
        if connection.closed:
            return
        connection.closed = True
        gate = connection.gate
        gate.finished(connection)
        dialing = connection.dialing
        if dialing is not None:  # the client left while its connect ran
            backend = connection.dial_backend
            connection.dialing = connection.dial_backend = None
            self.discard(dialing)
            if backend is not None:
                gate.failed(connection, backend, ConnectionAbortedError())
        self.discard(connection.client)
        if connection.server is not None:
            self.discard(connection.server)
