"""Relays out-of-zone queries to configured upstream resolvers (only when asked to)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Sequence

from pilotfish.config import HostPort

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!H")


class _OneAnswer(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) >= 12 and data[:2] == self.query_id and data[2] & 0x80:
            if not self.reply.done():
                self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


_SERVFAIL = 2
_REFUSED = 5


class Forwarder:
    """Tries each upstream in order over the client's transport; None when none answers.

    An upstream that answers SERVFAIL or REFUSED (one that detected a loop, or does not serve
    the name) passes the query on to the next; when every upstream does, the last such
    answer is relayed.
    """

    def __init__(self, upstreams: Sequence[HostPort], timeout: float = 2.0) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout = timeout

    async def resolve(self, query: bytes, tcp: bool) -> bytes | None:
        """The first useful upstream response to the query, unchanged (same ID)."""
        refused: bytes | None = None
        for upstream in self.upstreams:
            try:
                if tcp:
                    reply = await asyncio.wait_for(self._tcp(query, upstream), self.timeout)
                else:
                    reply = await asyncio.wait_for(self._udp(query, upstream), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s failed: %r", upstream, exc)
                continue
            if len(reply) < 4 or reply[3] & 0x0F not in (_SERVFAIL, _REFUSED):
                return reply
            refused = reply
        return refused

    async def _udp(self, query: bytes, upstream: HostPort) -> bytes:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _OneAnswer(query[:2]), remote_addr=(upstream.host, upstream.port))
        try:
            transport.sendto(query)
            return await protocol.reply
        finally:
            transport.close()

    async def _tcp(self, query: bytes, upstream: HostPort) -> bytes:
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(_LENGTH.pack(len(query)) + query)
            (length,) = _LENGTH.unpack(await reader.readexactly(2))
            return await reader.readexactly(length)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
