"""Per-listener HTTP limits, so no client can take a listener away from everyone else.

A listener keeps at most `max_connections` (pilotfish.http.protocol enforces the head size
and the request deadline on each). Blocking reads (long-polls) may hold at most a share of
them, and a connection that has carried a write is not closed to make room while anything
else can be: when full, an idle reader's connection goes first, then the oldest long-poll is
answered at once (with the current answer, which a long-poll client simply asks again after),
and only when all are busy is the newcomer refused (503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from pilotfish.http.long_polls import TooManyWaiting
from pilotfish.metrics import Metrics, Sample

log = logging.getLogger(__name__)

MAX_LINGERING = 64  # refused connections draining at once per listener; beyond, closed at once
COMPLAIN_EVERY = 10.0  # seconds between two log lines about the same kind of refusal


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one listener accepts from its clients."""

    max_header: int = 16 * 1024  # request line and header fields, bytes
    request_timeout: float = 10.0  # from connecting (or a request's first byte) to its last
    max_connections: int = 1024
    keep_alive: int = 75  # idle seconds between requests on one connection
    long_poll_share: float = 0.5  # of max_connections that waiting long-polls may hold


class Connection(Protocol):
    """What a listener needs of one of its connections (pilotfish.http.protocol's)."""

    wrote: bool  # carried a write that succeeded: kept over readers
    serving: bool  # speaks HTTP (a TLS connection: once its handshake is done)

    @property
    def idle(self) -> bool:
        """No request is being served."""
        ...

    def close_now(self) -> None:
        """Close at once."""
        ...

    def answer_now(self, early: asyncio.Future[None]) -> None:
        """End its long-poll with the current answer, and close after it."""
        ...

    def stop_lingering(self) -> None:
        """Close it now, while it drains after a refusal."""
        ...


class Complaint:
    """One log line per COMPLAIN_EVERY seconds about a refusal that may come by the thousand."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._last = -COMPLAIN_EVERY
        self._since = 0

    def __call__(self, detail: str = "") -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last >= COMPLAIN_EVERY:
            log.warning("%s%s (%d refused since the last such message)", self.message, detail,
                        self._since)
            self._last, self._since = now, 0


class Listener:
    """The open connections of one listener, least recently active first."""

    def __init__(self, limits: HttpLimits, what: str = "http") -> None:
        self.limits = limits
        self.what = what
        self.tls: ssl.SSLContext | None = None  # set: connections start TLS after accept
        self.connections: dict[Connection, None] = {}
        self.lingering: dict[Connection, None] = {}  # answered, draining, outside the cap
        self.waiting: dict[Connection, asyncio.Future[None]] = {}  # long-polls, oldest first
        self.writers = 0  # connections that have carried a write
        self.refused: dict[int, int] = {}  # answered outside any request (400, 408, 431, 503)
        self.evicted = 0  # idle connections closed to make room
        self.shed = 0  # long-polls answered early to make room
        self.polls_refused = 0  # long-polls refused (503): the share was full
        self.cut = 0  # requests whose body did not arrive in time
        self._full = Complaint(f"{what}: every connection busy, refusing new ones")
        self._no_files = Complaint(f"{what}: out of file descriptors, refusing new connections")

    @property
    def most_waiting(self) -> int:
        """How many long-polls may wait at once."""
        return max(1, int(self.limits.max_connections * self.limits.long_poll_share))

    def resize(self, max_connections: int) -> None:
        """Change the connection cap (sized to the open-files limit before serving)."""
        self.limits = dataclasses.replace(self.limits, max_connections=max_connections)

    def samples(self) -> Iterator[Sample]:
        """The listener's state and refusals as metric samples (they never reach the app)."""
        listener = ("listener", self.what)
        yield "pilotfish_http_connections", (listener,), float(len(self.connections))
        yield "pilotfish_http_long_polls_waiting", (listener,), float(len(self.waiting))
        for status, count in sorted(self.refused.items()):
            yield ("pilotfish_http_refused_total", (listener, ("status", str(status))),
                   float(count))
        yield "pilotfish_http_evicted_total", (listener,), float(self.evicted)
        yield ("pilotfish_http_long_polls_shed_total", (listener, ("action", "answered_early")),
               float(self.shed))
        yield ("pilotfish_http_long_polls_shed_total", (listener, ("action", "refused")),
               float(self.polls_refused))
        yield "pilotfish_http_cut_total", (listener,), float(self.cut)

    def admit(self, connection: Connection) -> bool:
        """Make room for a new connection if the cap is reached; False when nothing can go."""
        if len(self.connections) >= self.limits.max_connections and not self._make_room():
            return False
        self.connections[connection] = None
        return True

    def _make_room(self) -> bool:
        """Close the longest idle connection that never wrote; else answer the oldest waiting
        long-poll now; else, when writers hold over half the cap, close the longest idle one."""
        idle_writer = None
        for connection in self.connections:
            if connection.idle:
                if not connection.wrote:
                    self._evict(connection)
                    return True
                idle_writer = idle_writer or connection
        if self.waiting:
            poll = next(iter(self.waiting))
            self.connections.pop(poll, None)
            self.shed += 1
            poll.answer_now(self.waiting.pop(poll))
            return True
        if idle_writer is not None and self.writers > self.limits.max_connections // 2:
            self._evict(idle_writer)
            return True
        return False

    def _evict(self, connection: Connection) -> None:
        self.evicted += 1
        self.connections.pop(connection)
        connection.close_now()

    def touch(self, connection: Connection) -> None:
        """The connection is active: it is the last to be evicted now."""
        if connection in self.connections:
            del self.connections[connection]
            self.connections[connection] = None

    def wrote(self, connection: Connection) -> None:
        """The connection carried a write that succeeded: keep it over readers."""
        if not connection.wrote:
            connection.wrote = True
            self.writers += 1

    def begin_wait(self, connection: Connection) -> asyncio.Future[None]:
        """A long-poll starts waiting, within the share (TooManyWaiting beyond it)."""
        if len(self.waiting) >= self.most_waiting:
            self.polls_refused += 1
            raise TooManyWaiting()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[connection] = future
        return future

    def linger(self, connection: Connection) -> None:
        """The connection was answered and is draining: out of the cap, into a bounded set."""
        self.connections.pop(connection, None)
        self.lingering[connection] = None
        while len(self.lingering) > MAX_LINGERING:
            oldest = next(iter(self.lingering))
            del self.lingering[oldest]
            oldest.stop_lingering()

    def forget(self, connection: Connection) -> None:
        """The connection is closed."""
        self.connections.pop(connection, None)
        self.lingering.pop(connection, None)
        self.waiting.pop(connection, None)
        if connection.wrote:
            connection.wrote = False
            self.writers -= 1

    def count(self, status: int) -> None:
        """One refusal outside any request, answered with `status` (or closed, on TLS)."""
        self.refused[status] = self.refused.get(status, 0) + 1
        if status == 503:
            self._full(f" ({len(self.connections)} open, cap {self.limits.max_connections})")

    def out_of_files(self, error: OSError) -> None:
        """accept() failed for want of a file descriptor: the newcomer gets a 503 if it can."""
        self.refused[503] = self.refused.get(503, 0) + 1
        self._no_files(f" ({error.strerror})")

    def close_unserved(self) -> None:
        """Close connections that never got to HTTP (TLS handshakes): the server stops."""
        for connection in [c for c in self.connections if not c.serving]:
            connection.close_now()
        for connection in [c for c in self.lingering if not c.serving]:
            connection.stop_lingering()


def describe(metrics: Metrics) -> None:
    """Declare the listener metrics once per process, whichever listeners it runs."""
    metrics.describe("pilotfish_http_connections", "gauge",
                     "Open connections counted against the listener's cap")
    metrics.describe("pilotfish_http_long_polls_waiting", "gauge",
                     "Blocking reads (?index=) waiting for a change")
    metrics.describe("pilotfish_http_refused_total", "counter",
                     "Connections answered outside any request: 400 (plain HTTP to a TLS "
                     "port), 408 (the request or TLS handshake did not arrive in time), 431 "
                     "(head too large), 503 (every connection busy, or no file descriptor left)")
    metrics.describe("pilotfish_http_evicted_total", "counter",
                     "Idle connections closed to make room for a new one")
    metrics.describe("pilotfish_http_long_polls_shed_total", "counter",
                     "Blocking reads answered early to make room (answered_early) or refused "
                     "503 because their share of the connections was taken (refused)")
    metrics.describe("pilotfish_http_cut_total", "counter",
                     "Connections closed because a request body did not arrive in time")
