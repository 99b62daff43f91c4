"""The DNS component: UDP and TCP listeners on one port, answering from a catalog view."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from pilotfish.config import HostPort
from pilotfish.dns.answers import RCODE_NAMES
from pilotfish.dns.forward import Forwarder
from pilotfish.dns.names import read_name
from pilotfish.dns.responder import DEFAULT_UDP_SIZE, FORWARD, Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings, type_name
from pilotfish.metrics import Metrics, Sample
from pilotfish.registry.catalog import Catalog
from pilotfish.registry.view import CatalogView

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")
TCP_IDLE = 10.0  # seconds a TCP connection may sit without a query (RFC 7766 suggests ~10 s)
TCP_MAX_CONNECTIONS = 512
UDP_BUFFER = 4 << 20
MAX_FORWARDS = 1024  # relayed queries in flight at once; more are dropped


class _UdpReader:
    """Reads the UDP socket straight from the loop's readiness callback, in batches.

    Cheaper per packet than a DatagramProtocol: no transport layer between the socket and
    the responder, and one wakeup drains every queued query (up to BATCH).
    """

    BATCH = 64
    MAX_QUERY = 4096  # larger UDP queries arrive cut short and get FORMERR

    def __init__(self, server: DnsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        answer = self.server.responder.answer
        size = self.MAX_QUERY
        for _ in range(self.BATCH):
            try:
                data, addr = recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket; nothing to answer
                continue
            try:
                response = answer(data)
            except Exception:
                self.server.failed(data)
                continue
            if type(response) is bytes:
                try:
                    sendto(response, addr)
                except OSError:  # send buffer full or client gone: UDP may drop
                    self.server.stats.dropped += 1
            elif response is FORWARD:
                self.server.forward(data, False, functools.partial(self._send, addr=addr))

    def _send(self, reply: bytes, addr: Any) -> None:
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile
            self.sock.sendto(reply, addr)

    def close(self) -> None:
        """Stop reading and close the socket."""
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class _Tcp(asyncio.Protocol):
    """Length-prefixed queries (RFC 1035 4.2.2, RFC 7766), pipelined, with an idle timeout."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= TCP_MAX_CONNECTIONS:
            transport.close()
            return
        self.server.connections.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(TCP_IDLE, self.close)

    def close(self) -> None:
        """End the connection (idle, shutdown or a framing error)."""
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm()
        while len(self.buffer) >= 2:
            (length,) = _LENGTH.unpack_from(self.buffer)
            if length == 0:
                self.close()
                return
            if len(self.buffer) < 2 + length:
                return
            query = bytes(self.buffer[2:2 + length])
            del self.buffer[:2 + length]
            self.server.stats.tcp += 1
            try:
                response = self.server.responder.answer(query, tcp=True)
            except Exception:
                self.server.failed(query)
                continue
            if type(response) is bytes:
                self.send(response)
            elif response is FORWARD:
                self.server.forward(query, True, self.send)

    def send(self, response: bytes) -> None:
        """Write one length-prefixed response, unless the connection has gone."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_LENGTH.pack(len(response)) + response)


class DnsServer:
    """Serves the zone built from a CatalogView over UDP and TCP; a `pilotfish` component."""

    def __init__(self, catalog: Catalog, listen: HostPort, settings: ZoneSettings,
                 forward: tuple[HostPort, ...] = (), udp_size: int = DEFAULT_UDP_SIZE,
                 view: CatalogView | None = None) -> None:
        self.catalog = catalog
        self.listen = listen
        self.address = listen
        self.stats = DnsStats()
        self.view = view or CatalogView(catalog)
        self._own_view = view is None
        self.zone = Zone(settings, self.stats)
        self.forwarder = Forwarder(forward) if forward else None
        self.responder = Responder(self.zone, self.stats, udp_size, forwarding=bool(forward))
        self.connections: set[_Tcp] = set()
        self._udp: _UdpReader | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Follow the catalog, then bind UDP and TCP on the same port (port 0: one is picked)."""
        self.view.subscribe(self._on_snapshot)
        if self._own_view:
            await self.view.start()
        if self.view.stale:
            log.warning("dns: catalog not reachable yet; answering from an empty view")
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            udp_sock = self._udp_socket()
            port = udp_sock.getsockname()[1]
            try:
                self._tcp = await loop.create_server(
                    lambda: _Tcp(self), self.listen.host, port, reuse_address=True)
            except OSError:
                udp_sock.close()
                if self.listen.port or attempt == 19:
                    raise
                continue
            self._udp = _UdpReader(self, udp_sock)
            break
        self.address = HostPort(self.listen.host, port)
        log.info("dns listening on udp://%s and tcp://%s for domain %s", self.address,
                 self.address, self.zone.domain)

    def _udp_socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)
            sock.bind((self.listen.host, self.listen.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

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
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_view:
            await self.view.stop()

    def _on_snapshot(self, snapshot: Any) -> None:
        self.zone.update(snapshot)

    def failed(self, data: bytes) -> None:
        """Count and log a query the responder could not handle (a bug, never bad input)."""
        self.stats.dropped += 1
        log.exception("dns: failed to answer a %d-octet query", len(data))

    def forward(self, query: bytes, tcp: bool, send: Callable[[bytes], None]) -> None:
        """Relay an out-of-zone query in the background; SERVFAIL when no upstream answers."""
        forwarder = self.forwarder
        if forwarder is None:
            return
        if len(self._tasks) >= MAX_FORWARDS:  # bounded: a flood cannot pile up tasks
            self.stats.forwarded["shed"] = self.stats.forwarded.get("shed", 0) + 1
            return

        async def relay() -> None:
            reply = await forwarder.resolve(query, tcp)
            qtype = _question_type(query)
            if reply is None:
                self.stats.forwarded["failed"] = self.stats.forwarded.get("failed", 0) + 1
                self.stats.count(qtype, "SERVFAIL")
                reply = query[:2] + bytes((0x80 | (query[2] & 0x01), 0x82)) + bytes(8)
            else:
                self.stats.forwarded["answered"] = self.stats.forwarded.get("answered", 0) + 1
                self.stats.count(qtype, _rcode_name(reply[3] & 0x0F))
            send(reply)

        task = asyncio.create_task(relay())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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


def _rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))
