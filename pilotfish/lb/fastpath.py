"""The epoll engine: raw non-blocking sockets on one edge-triggered epoll set of the balancer's.

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
import contextlib
import errno
import logging
import os
import select
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from pilotfish.lb.listener import RouteListener
from pilotfish.lb.refuse import reset_on_close

if TYPE_CHECKING:
    from pilotfish.lb.balancer import LoadBalancer
    from pilotfish.lb.pool import Backend
    from pilotfish.lb.routes import Route

log = logging.getLogger(__name__)

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
RDHUP, ET = select.EPOLLRDHUP, select.EPOLLET
READ_MASK = IN | RDHUP | ET  # what a client socket is watched for until a write blocks
FULL_MASK = IN | OUT | RDHUP | ET  # a backend socket (OUT tells the connect is done)
ENDED = RDHUP | HUP
DONTWAIT = socket.MSG_DONTWAIT
MORE = socket.MSG_DONTWAIT | socket.MSG_MORE  # hold the segment: the FIN follows at once
CHUNK = 256 << 10  # bytes read per recv
ACCEPT_BATCH = 64  # clients accepted per wake-up of one listener
BATCH = 512  # epoll events handled per wake-up
STREAM = socket.SOCK_STREAM


class FastSide:
    """One socket of a proxied connection, with what the edge-triggered events told us."""

    __slots__ = ("sock", "fd", "connection", "peer", "upstream", "readable", "hup", "eof",
                 "shut", "pending", "watch_out", "received")

    def __init__(self, connection: FastConnection, sock: _socket.socket, upstream: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.connection: FastConnection | None = connection
        self.peer: FastSide | None = None
        self.upstream = upstream  # the backend's socket
        self.readable = False  # an IN edge came and reading has not hit "no more" since
        self.hup = False  # the peer shut down its write side: EOF follows the data
        self.eof = False  # read EOF (this side's direction is done)
        self.shut = False  # our write side toward it is shut down
        self.pending = b""  # bytes for this socket that did not fit in its send buffer
        self.watch_out = upstream  # watched for OUT (backends from the start, for connect)
        self.received = 0  # bytes read from it (and written to the peer)


class FastConnection:
    """A client connection and its backend connection, as raw sockets (a `Link`)."""

    __slots__ = ("listener", "engine", "client", "server", "dialing", "dial_backend",
                 "backend", "closed", "peername", "sockname", "tried", "idle", "seen")

    def __init__(self, listener: FastListener, sock: _socket.socket, peername: Any) -> None:
        self.listener = listener
        self.engine = listener.engine
        self.client = FastSide(self, sock, False)
        self.server: FastSide | None = None
        self.dialing: FastSide | None = None  # the backend socket while its connect runs
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
        if self.listener.route.proxy_protocol:
            self.sockname = self.client.sock.getsockname()

    def dial(self, backend: Backend, timeout: float) -> None:
        """Start a non-blocking connect; the engine reports it to the listener."""
        self.engine.dial(self, backend, timeout)

    def refuse(self) -> None:
        """Reset the client: it was not served."""
        reset_on_close(self.client.sock)
        self.engine.drop(self)

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
        self.engine.drop(self)

    def abort(self) -> None:
        """Close both sockets now."""
        self.engine.drop(self)


class Engine:
    """The balancer's epoll set, watched by the event loop as one reader; moves the bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.sides: dict[int, FastSide] = {}
        self.listeners: dict[int, FastListener] = {}
        self.doomed: list[_socket.socket] = []  # closed after the batch: fds must not be reused
        self.batch = False
        self.dials: deque[tuple[float, FastSide]] = deque()  # connect deadlines, in order
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

    def event(self, side: FastSide, mask: int) -> None:
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

    def pump(self, src: FastSide, dst: FastSide) -> None:
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

    def want_out(self, side: FastSide) -> None:
        """A write did not fit: hear when the socket has room again."""
        if not side.watch_out:
            side.watch_out = True
            self.epoll.modify(side.fd, FULL_MASK)

    def flush(self, side: FastSide) -> None:
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

    def ended(self, src: FastSide, dst: FastSide) -> None:
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

    def reset(self, side: FastSide) -> None:
        """A socket failed (reset): count it, close both."""
        connection = side.connection
        if connection is None:
            return
        if not connection.closed:
            connection.listener.stats.resets[side.upstream] += 1
        self.drop(connection)

    # -- connecting --------------------------------------------------------------------

    def dial(self, connection: FastConnection, backend: Backend, timeout: float) -> None:
        """Start a non-blocking connect to `backend`, with a deadline."""
        family = socket.AF_INET6 if ":" in backend.address else socket.AF_INET
        try:
            sock = _socket.socket(family, STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            connection.listener.failed(connection, backend, exc)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((backend.address, backend.port))
        except OSError as exc:
            code = exc.errno or errno.EINVAL
        if code and code != errno.EINPROGRESS:
            sock.close()
            connection.listener.failed(connection, backend, OSError(code, os.strerror(code)))
            return
        side = FastSide(connection, sock, True)
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

    def dial_failed(self, side: FastSide, error: OSError) -> None:
        """Drop the half-made backend socket; the listener retries or refuses the client."""
        connection = side.connection
        assert connection is not None and connection.dial_backend is not None
        backend = connection.dial_backend
        connection.dialing = connection.dial_backend = None
        self.discard(side)
        connection.listener.failed(connection, backend, error)

    def dialed(self, connection: FastConnection, side: FastSide) -> None:
        """Connected: join the sockets; the PROXY header, then the client's bytes, go first."""
        backend = connection.dial_backend
        assert backend is not None
        connection.dialing = connection.dial_backend = None
        first = connection.listener.connected(connection, backend)
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

    def adopt(self, side: FastSide) -> None:
        """Watch an accepted client socket."""
        self.sides[side.fd] = side
        self.epoll.register(side.fd, READ_MASK)

    def discard(self, side: FastSide) -> None:
        """Close one socket (after the batch, while one is being handled)."""
        side.connection = None
        side.peer = None
        if self.sides.get(side.fd) is side:
            del self.sides[side.fd]
        if self.batch:
            self.doomed.append(side.sock)
        else:
            side.sock.close()

    def drop(self, connection: FastConnection) -> None:
        """Close a connection's sockets and settle its counters (once)."""
        if connection.closed:
            return
        connection.closed = True
        listener = connection.listener
        listener.finished(connection)
        dialing = connection.dialing
        if dialing is not None:  # the client left while its connect ran
            backend = connection.dial_backend
            connection.dialing = connection.dial_backend = None
            self.discard(dialing)
            if backend is not None:
                listener.failed(connection, backend, ConnectionAbortedError())
        self.discard(connection.client)
        if connection.server is not None:
            self.discard(connection.server)


class FastListener(RouteListener):
    """A route's listener on the epoll engine: accepts with accept4 until the backlog is
    empty, and proxies with raw sockets."""

    def __init__(self, balancer: LoadBalancer, route: Route, engine: Engine) -> None:
        super().__init__(balancer, route)
        self.engine = engine
        self.sockets: list[socket.socket] = []

    async def start(self) -> None:
        """Bind the listen address (every address a name resolves to), start accepting."""
        listen = self.route.listen
        infos = await self._loop.getaddrinfo(listen.host or None, listen.port, type=STREAM,
                                             flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(4096)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            raise
        for sock in self.sockets:
            self.engine.listeners[sock.fileno()] = self
            self.engine.epoll.register(sock.fileno(), IN)
        self.accepting = True
        self.listening(self.sockets[0].getsockname())

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections already open carry on."""
        self.accepting = False
        engine = self.engine
        for sock in self.sockets:
            fd = sock.fileno()
            if engine.listeners.pop(fd, None) is not None:
                with contextlib.suppress(OSError):  # not registered while accept is paused
                    engine.epoll.unregister(fd)
            sock.close()
        self.sockets = []
        self.pool.close()

    def accept_ready(self, fd: int) -> None:
        """Accept every waiting client (up to a batch); each is admitted or reset."""
        sock = next((s for s in self.sockets if s.fileno() == fd), None)
        if sock is None:
            return
        accept = sock._accept  # type: ignore[attr-defined]
        family = sock.family
        engine = self.engine
        for _ in range(ACCEPT_BATCH):
            try:
                client_fd, peername = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._accept_failed(sock, exc)
                return
            client = _socket.socket(family, STREAM, 0, client_fd)
            connection = FastConnection(self, client, peername)
            try:
                if not self.admit(connection):
                    connection.closed = True
                    reset_on_close(client)
                    client.close()
                elif not connection.closed:
                    engine.adopt(connection.client)
            except Exception:  # e.g. no memory for epoll: this client, not the listener
                log.exception("lb: could not take a client on %s; closing it", self.address)
                if connection.closed:
                    client.close()
                else:
                    engine.drop(connection)

    def _accept_failed(self, sock: socket.socket, exc: OSError) -> None:
        if exc.errno in (errno.ECONNABORTED, errno.EPERM, errno.EPROTO):
            return  # that client gave up; the listener is fine
        log.error("lb: accept on %s failed: %s; pausing it for 1s", self.address, exc)
        fd = sock.fileno()
        self.engine.epoll.unregister(fd)
        self._loop.call_later(1.0, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if self.accepting and sock in self.sockets:
            self.engine.epoll.register(sock.fileno(), IN)
