"""The DNS component: UDP and TCP listeners on one port, answering from a catalog view."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from pilotfish.catalog.interface import Catalog, Snapshot
from pilotfish.catalog.view import CatalogView, ViewReader
from pilotfish.config import HostPort
from pilotfish.dns.access import RateLimit, slip
from pilotfish.dns.answers import RCODE_NAMES
from pilotfish.dns.forward import Forwarder
from pilotfish.dns.loops import InFlight, question_key
from pilotfish.dns.names import read_name
from pilotfish.dns.responder import DEFAULT_UDP_SIZE, FORWARD, MAX_UDP_QUERY, Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings, type_name
from pilotfish.metrics import Metrics, Sample

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")
TCP_IDLE = 5.0  # a TCP connection that completes no query for this long is closed
TCP_MAX_CONNECTIONS = 512  # when full, the connection idle the longest makes room
TCP_WRITE_HIGH = 256 * 1024  # unsent octets per connection before it stops reading queries
TCP_BATCH = 32  # queries answered per connection per turn of the loop
UDP_BUFFER = 4 << 20
MAX_FORWARDS = 1024  # relayed queries in flight at once; more are dropped
LOOP_LOG_EVERY = 60.0  # seconds between two log lines about a forwarding loop
COALESCE = 0.003  # seconds: catalog changes arriving within this are applied together
ZONE_SHARE = 0.05  # at most this share of the loop goes to applying a stream of changes...
MAX_COALESCE = 0.05  # ...but a change waits no longer than this


class _UdpReader:
    """Reads the UDP socket straight from the loop's readiness callback, in batches.

    Cheaper per packet than a DatagramProtocol: no transport layer between the socket and
    the responder, and one wakeup drains every queued query (up to BATCH).
    """

    BATCH = 64
    READ_SIZE = MAX_UDP_QUERY + 1  # one octet more, so an oversized query is seen as such

    def __init__(self, server: DnsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        answer = self.server.responder.answer
        limit = self.server.rate_limit
        size = self.READ_SIZE
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket; nothing to answer
                continue
            try:
                response = answer(data, False, addr)
            except Exception:
                self.server.failed(data)
                continue
            if type(response) is bytes:
                if limit is not None and not limit.allow(addr):
                    response = slip(response)
                try:
                    sendto(response, addr)
                except OSError:  # send buffer full or client gone: UDP may drop
                    self.server.stats.dropped += 1
            elif response is FORWARD:
                self.server.forward(data, False, functools.partial(self._send, addr=addr), addr)

    def _send(self, reply: bytes, addr: Any) -> None:
        limit = self.server.rate_limit
        if limit is not None and not limit.allow(addr):
            reply = slip(reply)
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
            self.sock.sendto(reply, addr)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Tcp(asyncio.Protocol):
    """Length-prefixed queries (RFC 1035 4.2.2, RFC 7766), pipelined, with backpressure.

    A connection must complete a query (or read a buffer's worth of answers) every TCP_IDLE
    seconds, whatever trickles in. Answers
    are written as queries are read, a batch per turn of the loop; while the client leaves
    more than TCP_WRITE_HIGH octets unread, no more queries are read from it.
    """

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()  # when the last query was completed (or the connection made)
        self.timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.scheduled = False
        self.reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = stream = cast(asyncio.Transport, transport)
        self.peer = stream.get_extra_info("peername")
        stream.set_write_buffer_limits(high=TCP_WRITE_HIGH)
        self.server.admit(self)
        self.timer = self.loop.call_at(self.last + TCP_IDLE, self._check_idle)

    def _check_idle(self) -> None:
        deadline = self.last + TCP_IDLE
        if self.loop.time() >= deadline:
            self.close()
        else:
            self.timer = self.loop.call_at(deadline, self._check_idle)

    def close(self) -> None:
        """End the connection (idle, making room, shutdown or a framing error)."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)
        self.buffer.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last = self.loop.time()  # the client read our answers: it is not idle
        self._drain()

    def _reading(self, on: bool) -> None:
        transport = self.transport
        if on != self.reading and transport is not None and not transport.is_closing():
            self.reading = on
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.scheduled:
            self._drain()

    def _drain(self) -> None:
        """Answer the complete queries in the buffer, a batch at a time, while writes flow."""
        self.scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        buffer, server = self.buffer, self.server
        answered = 0
        while not self.write_paused and len(buffer) >= 2:
            if answered == TCP_BATCH:
                self.scheduled = True
                self.loop.call_soon(self._drain)
                break
            (length,) = _LENGTH.unpack_from(buffer)
            if length == 0:
                self.close()
                return
            if len(buffer) < 2 + length:
                break
            query = bytes(buffer[2:2 + length])
            del buffer[:2 + length]
            answered += 1
            self.last = self.loop.time()
            server.stats.tcp += 1
            try:
                response = server.responder.answer(query, True, self.peer)
            except Exception:
                server.failed(query)
                continue
            if type(response) is bytes:
                self.send(response)
            elif response is FORWARD:
                server.forward(query, True, self.send, self.peer)
        self._reading(not (self.write_paused or self.scheduled))

    def send(self, response: bytes) -> None:
        """Write one length-prefixed response, unless the connection has gone."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LENGTH.pack(len(response)) + response)


class DnsServer:
    """Serves the zone built from a CatalogView over UDP and TCP; a `pilotfish` component."""

    def __init__(self, catalog: Catalog | None, listen: HostPort, settings: ZoneSettings,
                 forward: tuple[HostPort, ...] = (), udp_size: int = DEFAULT_UDP_SIZE,
                 view: ViewReader | None = None,
                 forward_allow: Callable[[Any], bool] | None = None,
                 rate_limit: RateLimit | None = None, reuse_port: bool = False) -> None:
        self.catalog = catalog
        self.listen = listen
        self.address = listen
        self.stats = DnsStats()
        self._own_view = view is None
        if view is None:
            assert catalog is not None, "a DnsServer needs a catalog or a view"
            view = CatalogView(catalog)
        self.view: ViewReader = view
        self.reuse_port = reuse_port  # a worker: its siblings bind the same port
        self.zone = Zone(settings, self.stats)
        self.forwarder = Forwarder(forward) if forward else None
        self.in_flight = InFlight(forward)
        self._loop_logged = -LOOP_LOG_EVERY
        self.responder = Responder(self.zone, self.stats, udp_size, forwarding=bool(forward),
                                   forward_allow=forward_allow)
        self.rate_limit = rate_limit  # UDP only: TCP clients cannot be spoofed
        if rate_limit is not None:
            self.stats.rate_limited = lambda: rate_limit.slipped
        self.connections: set[_Tcp] = set()
        self._udp: _UdpReader | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: Snapshot | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._apply_cost = 0.0  # seconds the last zone update took

    async def start(self) -> None:
        """Follow the catalog, then bind UDP and TCP on the same port (port 0: one is picked)."""
        self.view.subscribe(self._on_snapshot)
        if self._own_view:
            await self.view.start()
        self._apply()  # the first view is served from the first query on
        if self.view.stale:
            log.warning("dns: catalog not reachable yet; answering from an empty view")
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            udp_sock = self._udp_socket()
            port = udp_sock.getsockname()[1]
            try:
                self._tcp = await loop.create_server(
                    lambda: _Tcp(self), self.listen.host, port, reuse_address=True,
                    reuse_port=self.reuse_port or None)
            except OSError:
                udp_sock.close()
                if self.listen.port or attempt == 19:
                    raise
                continue
            self._udp = _UdpReader(self, udp_sock)
            break
        self.address = HostPort(self.listen.host, port)
        log.log(logging.DEBUG if self.reuse_port else logging.INFO,
                "dns listening on udp://%s and tcp://%s for domain %s", self.address,
                self.address, self.zone.domain)

    def _udp_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.listen.host, self.listen.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def open_files_needed(self) -> int:
        """Descriptors it may hold: its TCP clients, its sockets, forwarding (pilotfish.fds)."""
        return TCP_MAX_CONNECTIONS + 16

    async def stop(self) -> None:
        """Close the listeners and open connections; stop following the catalog."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self.connections):
                connection.close()
            await self._tcp.wait_closed()
            self._tcp = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_view:
            await self.view.stop()

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        """Apply a burst of changes once, COALESCE seconds after its first one.

        When updates are costly (a big service changing), the wait grows with their cost, so
        a stream of writes cannot keep the loop from answering queries.
        """
        self._pending = snapshot
        if self._flush is None:
            delay = min(MAX_COALESCE,
                        max(COALESCE, self._apply_cost * (1 - ZONE_SHARE) / ZONE_SHARE))
            self._flush = asyncio.get_running_loop().call_later(delay, self._apply)

    def _apply(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        snapshot, self._pending = self._pending, None
        if snapshot is not None:
            started = time.perf_counter()
            self.zone.update(snapshot)
            self._apply_cost = time.perf_counter() - started

    def admit(self, connection: _Tcp) -> None:
        """Take a new TCP connection; when full, close the one whose last query is oldest."""
        connections = self.connections
        if len(connections) >= TCP_MAX_CONNECTIONS:
            oldest = min(connections, key=lambda c: c.last)
            connections.discard(oldest)
            oldest.close()
        connections.add(connection)

    def failed(self, data: bytes) -> None:
        """Count and log a query the responder could not handle (a bug, never bad input)."""
        self.stats.dropped += 1
        log.exception("dns: failed to answer a %d-octet query", len(data))

    def forward(self, query: bytes, tcp: bool, send: Callable[[bytes], None],
                peer: Any = None) -> None:
        """Relay an out-of-zone query in the background; SERVFAIL when no upstream answers.

        A question already in flight upstream that arrives again from an upstream's address
        has gone round a loop: it is answered SERVFAIL at once, not forwarded again.
        """
        forwarder = self.forwarder
        if forwarder is None:
            return
        key = question_key(query)
        if key is None:  # the responder forwards only readable questions
            return
        stats = self.stats
        if self.in_flight.loops_back(key, peer):
            stats.forwarded["loop"] = stats.forwarded.get("loop", 0) + 1
            stats.count(_question_type(query), "SERVFAIL")
            self._log_loop(query, peer)
            send(_servfail(query))
            return
        if len(self._tasks) >= MAX_FORWARDS:  # bounded: a flood cannot pile up tasks
            stats.forwarded["shed"] = stats.forwarded.get("shed", 0) + 1
            return

        async def relay() -> None:
            self.in_flight.enter(key)
            try:
                reply = await forwarder.resolve(query, tcp)
            finally:
                self.in_flight.leave(key)
            qtype = _question_type(query)
            if reply is None:
                stats.forwarded["failed"] = stats.forwarded.get("failed", 0) + 1
                stats.count(qtype, "SERVFAIL")
                reply = _servfail(query)
            else:
                stats.forwarded["answered"] = stats.forwarded.get("answered", 0) + 1
                stats.count(qtype, _rcode_name(reply[3] & 0x0F))
            send(reply)

        task = asyncio.create_task(relay())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _log_loop(self, query: bytes, peer: Any) -> None:
        now = time.monotonic()
        if now - self._loop_logged >= LOOP_LOG_EVERY:
            self._loop_logged = now
            log.warning("dns: forwarding loop: a %s query came back from upstream %s while "
                        "in flight; answered SERVFAIL (does that upstream forward to us?)",
                        _question_type(query), str(peer[0])[:64] if peer else "?")

    def samples(self) -> Iterable[Sample]:
        """Prometheus samples, with the view's staleness read fresh."""
        self.stats.stale = self.view.stale
        return self.stats.samples()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the view is current; 503 "stale" while it serves the last view."""
        stale = self.view.stale
        return not stale, {"status": "stale" if stale else "ok", "index": self.zone.index}

    def describe(self, metrics: Metrics) -> None:
        """Add the DNS series to a Metrics registry (the API's /metrics in `pilotfish up`)."""
        self.stats.describe(metrics, self.samples)


def _question_type(query: bytes) -> str:
    try:
        _, end = read_name(query, 12)
        return type_name(query[end] << 8 | query[end + 1])
    except (ValueError, IndexError):
        return "other"


def _servfail(query: bytes) -> bytes:
    """A bare SERVFAIL for a query: its ID, RD echoed, RA set, no sections."""
    return query[:2] + bytes((0x80 | (query[2] & 0x01), 0x82)) + bytes(8)


def _rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))
