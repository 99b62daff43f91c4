"""One socketpair between the parent and a worker: framed messages, calls with replies.

A frame is a 4-octet length and a pickled tuple. Both ends are the same code and trust each
other (the parent started the worker). Three frames: ("tell", kind, body) expects nothing,
("call", id, kind, body) expects ("reply", id, ok, value). Messages are handled one at a
time in the order sent, so a view diff never overtakes the snapshot it applies to.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import pickle
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from pilotfish.loop import cancel_and_wait

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Any | Awaitable[Any]]
"""What a channel calls with each message (kind, body); a call's answer is its result."""
_LENGTH = struct.Struct("!I")


def encode(frame: tuple[Any, ...]) -> bytes:
    """A frame as it goes down the pipe: its length, then the pickled tuple."""
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class ChannelClosed(ConnectionError):
    """The other end has gone (it exited, or closed its end)."""


class Channel:
    """A worker's pipe to its parent, or the parent's to one worker."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handler: Handler, on_closed: Callable[[], None] | None = None) -> None:
        self.handler = handler
        self.on_closed = on_closed
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._task = asyncio.create_task(self._read(), name="worker-channel")

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler,
                   on_closed: Callable[[], None] | None = None) -> Channel:
        """A channel over a connected stream socket (one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 26)
        return cls(reader, writer, handler, on_closed)

    def tell(self, kind: str, body: Any = None) -> None:
        """Send a message that needs no answer (nothing happens once the other end is gone)."""
        self._send(("tell", kind, body))

    def send_encoded(self, data: bytes) -> None:
        """Send a frame made by `encode` (one encoding can go down many channels)."""
        if not self.closed and not self._writer.is_closing():
            self._writer.write(data)

    async def call(self, kind: str, body: Any = None, timeout: float = 5.0) -> Any:
        """Send a message and wait for the other end's answer (TimeoutError, ChannelClosed)."""
        if self.closed:
            raise ChannelClosed("worker channel closed")
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        try:
            self._send(("call", number, kind, body))
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(number, None)

    def _send(self, frame: tuple[Any, ...]) -> None:
        self.send_encoded(encode(frame))

    async def _read(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(_LENGTH.size)
                frame = pickle.loads(await self._reader.readexactly(_LENGTH.unpack(head)[0]))
                await self._dispatch(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._closed()

    async def _dispatch(self, frame: tuple[Any, ...]) -> None:
        if frame[0] == "reply":
            _, number, ok, value = frame
            future = self._waiting.get(number)
            if future is not None and not future.done():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(RuntimeError(value))
            return
        if frame[0] == "tell":
            _, kind, body = frame
            try:
                await _settle(self.handler(kind, body))
            except Exception:
                log.exception("worker channel: handling %r failed", kind)
            return
        _, number, kind, body = frame
        try:
            result = await _settle(self.handler(kind, body))
        except Exception as exc:
            log.exception("worker channel: call %r failed", kind)
            self._send(("reply", number, False, f"{type(exc).__name__}: {exc}"))
        else:
            self._send(("reply", number, True, result))

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("worker channel closed"))
        self._writer.close()
        if self.on_closed is not None:
            self.on_closed()

    async def close(self) -> None:
        """Close this end and stop reading."""
        if asyncio.current_task() is not self._task:
            await cancel_and_wait(self._task)
        self._closed()


async def _settle(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result
