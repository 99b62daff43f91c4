"""The HTTP protocol of every pilotfish listener: uvicorn's httptools one, held to its limits.

uvicorn bounds neither the request head nor the time a client takes to send a request, and
holds any number of connections. This protocol refuses a head over `max_header` bytes (431)
however it is split into reads, closes a connection whose request has not fully arrived
within `request_timeout` (408 while the head is incomplete; on a TLS listener the clock runs
from accept, through the handshake it does itself), and asks its Listener
(pilotfish.http.limits) for a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pilotfish.http.errors import error_body
from pilotfish.http.limits import HttpLimits, Listener
from pilotfish.http.long_polls import SCOPE_KEY
from pilotfish.http.tls import TlsLayer, speaks_tls

LINGER = 1.0  # seconds a refused connection is drained before it is closed
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REQUEST_LINE = 16  # bytes of a request line besides its target: method, version, CRLF


def protocol_for(limits: HttpLimits, what: str = "http"
                 ) -> tuple[type[GuardedProtocol], Listener]:
    """A protocol class for one listener (uvicorn builds one instance per connection)."""
    listener = Listener(limits, what)
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
        protocol.drain_and_close(self._transport)


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the head has grown past the limit."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head, a request deadline and a connection
    cap; on a TLS listener it also does the handshake itself, counted from accept."""

    listener: ClassVar[Listener]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # reads of the current head while it is incomplete
        self._head_parsed = 0  # the current head's fields as the parser hands them over
        self._in_body = False
        self._deadline: asyncio.TimerHandle | None = None
        self._closer: Callable[[], None] | None = None
        self._raw: asyncio.Transport | None = None  # a TLS listener's TCP connection
        self.serving = False  # HTTP runs (after the handshake, on a TLS listener)
        self.answered = False  # an answer is out and the connection closing: input is dropped
        self.wrote = False  # carried a write that succeeded
        self.app = self._guarded(self.app)

    @property
    def receiving(self) -> bool:
        """Part of a request has arrived and the rest may still be on its way."""
        return (self._in_head and self._head_bytes > 0) or self._in_body

    @property
    def idle(self) -> bool:
        """No request is being served: waiting for one, or receiving one not yet complete."""
        return self.cycle is None or self.cycle.response_complete

    def _guarded(self, app: Any) -> Any:
        """The ASGI app, given this connection as the request's wait slot, and noting writes."""
        listener = self.listener

        async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), SCOPE_KEY: self}
            if scope["method"] not in WRITES:
                await app(scope, receive, send)
                return

            async def noting(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and message["status"] < 400:
                    listener.wrote(self)
                await send(message)

            await app(scope, receive, noting)

        return guarded

    # the wait slot the app holds while a long-poll waits (pilotfish.http.long_polls.WaitSlot)

    def begin_wait(self) -> asyncio.Future[None]:
        return self.listener.begin_wait(self)

    def end_wait(self) -> None:
        self.listener.waiting.pop(self, None)

    def answer_now(self, early: asyncio.Future[None]) -> None:
        """End the long-poll with the current answer and close the connection after it."""
        if self.cycle is not None:
            self.cycle.keep_alive = False
        if not early.done():
            early.set_result(None)

    # connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.listener.tls is not None and self._raw is None:
            self._raw = transport  # TLS comes when the first bytes do
            if not self.listener.admit(self):
                self.listener.count(503)  # no way to say so before a handshake: closed
                transport.abort()
                return
            self._arm()
            return
        self.serving = True
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
        if self._raw is not None:
            return  # the handshake is done: admitted at accept, on the clock since
        if not self.listener.admit(self):
            self._answer(503, "unavailable", "too many connections; try again")
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.forget(self)
        self._disarm()
        if self.serving:
            super().connection_lost(exc)

    def _tls_lost(self) -> None:
        """The TCP connection under the TLS layer ended (before or after the handshake)."""
        if not self.serving:
            self.connection_lost(None)

    def close_now(self) -> None:
        """Close at once (to make room, or the server stops)."""
        if self.serving:
            self.transport.close()
        elif self._raw is not None:
            self._raw.abort()

    def pause_writing(self) -> None:
        if self.flow is not None:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            super().resume_writing()

    def drain_and_close(self, transport: asyncio.Transport) -> None:
        """Say we are done, drop what still arrives, close after LINGER s (or the client's
        close): the client reads our answer instead of a reset."""
        self.answered = True
        if transport.can_write_eof():
            transport.write_eof()
        self._disarm()
        self._closer = transport.close
        self._deadline = self.loop.call_later(LINGER, self.stop_lingering)
        self.listener.linger(self)

    def stop_lingering(self) -> None:
        """Close a lingering connection now."""
        self._disarm()
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    # reading

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return  # lingering after an answer: what still arrives is dropped unread
        if not self.serving:
            self._first_bytes(data)
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
            else:
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)  # an incomplete head, in the parser's buffer
            if self._head_bytes > self.listener.limits.max_header:
                self._head_too_large()

    def _first_bytes(self, data: bytes) -> None:
        """The first read on a TLS listener: a handshake goes to a TLS layer; anything else
        (a plain-HTTP request) is told to use https and closed."""
        raw = self._raw
        assert raw is not None and self.listener.tls is not None
        if not speaks_tls(data):
            self._answer(400, "https_required", "this port speaks HTTPS: use https://")
            return
        layer = TlsLayer(self, self.listener.tls, self.listener.limits.request_timeout,
                         self._tls_lost)
        raw.set_protocol(layer)
        layer.connection_made(raw)
        layer.feed(data)

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _head_too_large(self) -> None:
        self._answer(431, "too_large",
                     f"request head over {self.listener.limits.max_header} bytes")

    def _count_head(self, size: int) -> None:
        self._head_parsed += size
        if self._head_parsed > self.listener.limits.max_header:
            raise _HeadTooLarge()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._head_parsed = REQUEST_LINE
        self.listener.touch(self)
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        if not self.answered:
            self._disarm()
        super().on_message_complete()

    # the request deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.listener.limits.request_timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if not self.serving:  # a TLS handshake not done in time: nothing can be said
            self.listener.count(408)
            self.close_now()
            return
        if self.transport.is_closing():
            return
        if self._in_head:
            self._answer(408, "timeout", "the request did not arrive in time")
        else:
            self.listener.cut += 1
            self.transport.close()  # a body that trickles: the handler sees the client gone

    def _answer(self, status: int, code: str, message: str) -> None:
        """Answer outside any request (a refusal) and close the connection."""
        body = error_body(code, message)
        reasons = {400: "Bad Request", 408: "Request Timeout",
                   431: "Request Header Fields Too Large", 503: "Service Unavailable"}
        head = (f"HTTP/1.1 {status} {reasons[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.listener.count(status)
        if self.serving:
            self.transport.write(head + body)
            self.answered = True
            self.transport.close()
        else:
            assert self._raw is not None
            self._raw.write(head + body)
            self.drain_and_close(self._raw)
