"""Per-listener HTTP limits, so no client can take a listener away from everyone else.

uvicorn bounds neither the request head nor the time a client takes to send a request, and
holds any number of connections. This protocol (uvicorn's httptools one, plus the checks)
refuses a head over `max_header` bytes (431), closes a connection whose request has not
fully arrived within `request_timeout` (408 while the head is incomplete), and keeps at most
`max_connections` per listener: when full, the connection idle the longest makes room, and
if every connection is busy with a request the newcomer is refused (503).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pilotfish.metrics import Metrics, Sample

LINGER = 1.0  # seconds a refused connection is drained before it is closed


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one listener accepts from its clients."""

    max_header: int = 16 * 1024  # request line and header fields, bytes
    request_timeout: float = 10.0  # from connecting (or a request's first byte) to its last
    max_connections: int = 1024
    keep_alive: int = 75  # idle seconds between requests on one connection


class Listener:
    """The open connections of one listener, least recently active first."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.connections: dict[GuardedProtocol, None] = {}
        self.refused: dict[int, int] = {}  # answered outside any request (408, 431, 503)
        self.evicted = 0  # idle connections closed to make room
        self.cut = 0  # requests whose body did not arrive in time

    def samples(self, what: str) -> Iterator[Sample]:
        """The listener's refusals as metric samples (they never reach the ASGI app)."""
        listener = ("listener", what)
        for status, count in sorted(self.refused.items()):
            yield ("pilotfish_http_refused_total", (listener, ("status", str(status))),
                   float(count))
        yield "pilotfish_http_evicted_total", (listener,), float(self.evicted)
        yield "pilotfish_http_cut_total", (listener,), float(self.cut)

    def admit(self, connection: GuardedProtocol) -> bool:
        """Make room for a new connection by closing the longest idle; False when all are busy."""
        if len(self.connections) >= self.limits.max_connections:
            idle = next((c for c in self.connections if c.idle), None)
            if idle is None:
                return False
            self.evicted += 1
            self.connections.pop(idle)
            idle.transport.close()
        self.connections[connection] = None
        return True

    def touch(self, connection: GuardedProtocol) -> None:
        """The connection is active: it is the last to be evicted now."""
        if connection in self.connections:
            del self.connections[connection]
            self.connections[connection] = None


def describe(metrics: Metrics) -> None:
    """Declare the listener metrics once per process, whichever listeners it runs."""
    metrics.describe("pilotfish_http_refused_total", "counter",
                     "Connections answered outside any request: 408 (the request did not "
                     "arrive in time), 431 (head too large), 503 (every connection busy)")
    metrics.describe("pilotfish_http_evicted_total", "counter",
                     "Idle connections closed to make room for a new one")
    metrics.describe("pilotfish_http_cut_total", "counter",
                     "Connections closed because a request body did not arrive in time")


def protocol_for(limits: HttpLimits) -> tuple[type[GuardedProtocol], Listener]:
    """A protocol class for one listener (uvicorn builds one instance per connection)."""
    listener = Listener(limits)
    return type("ListenerProtocol", (GuardedProtocol,), {"listener": listener}), listener


class _LingeringTransport:
    """A transport whose close() lets the client read our answer while it is still sending.

    Closing a socket with unread input resets the connection, and the client loses the 413,
    431 or 408 that explains why. So: say we are done (write EOF), drop what still arrives,
    and close once the client closes too, or LINGER seconds later.
    """

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        protocol = self._protocol
        if not (protocol.answered or protocol.receiving):
            self._transport.close()
            return
        protocol.answered = True
        if self._transport.can_write_eof():
            self._transport.write_eof()
        protocol.linger(self._transport.close)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head, a request deadline and a connection cap."""

    listener: ClassVar[Listener]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._in_body = False
        self._deadline: asyncio.TimerHandle | None = None
        self.answered = False  # an answer is out and the connection closing: input is dropped

    @property
    def receiving(self) -> bool:
        """Part of a request has arrived and the rest may still be on its way."""
        return (self._in_head and self._head_bytes > 0) or self._in_body

    def linger(self, close: Callable[[], None]) -> None:
        """Close after LINGER seconds (sooner if the client closes)."""
        self._disarm()
        self._deadline = self.loop.call_later(LINGER, close)

    @property
    def idle(self) -> bool:
        """No request is being served: waiting for one, or receiving one not yet complete."""
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
        if not self.listener.admit(self):
            self._answer(503, "unavailable", "too many connections; try again")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # lingering after an answer: what still arrives is dropped unread
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.listener.limits.max_header:
                self._answer(431, "too_large", "request head over "
                             f"{self.listener.limits.max_header} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self.listener.touch(self)
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        if not self.answered:
            self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.listener.limits.request_timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._answer(408, "timeout", "the request did not arrive in time")
        else:
            self.listener.cut += 1
            self.transport.close()  # a body that trickles: the handler sees the client gone

    def _answer(self, status: int, code: str, message: str) -> None:
        """Answer outside any request (a refusal) and close the connection."""
        body = json.dumps({"error": message, "code": code}).encode()
        reasons = {408: "Request Timeout", 431: "Request Header Fields Too Large",
                   503: "Service Unavailable"}
        head = (f"HTTP/1.1 {status} {reasons[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.listener.refused[status] = self.listener.refused.get(status, 0) + 1
        self.answered = True
        self.transport.close()
