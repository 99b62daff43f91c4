"""A bounded client load for LB tests: many short connections, some half-closing."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.fixtures.servers import HOST


class ShortReply(ConnectionError):
    """The reply ended early or differed: the connection was cut mid-way."""


@dataclass
class Outcome:
    """What a load run saw: completed exchanges by backend name, and failures by kind."""

    served: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    failures_at: list[float] = field(default_factory=list)  # when each failed one started

    @property
    def completed(self) -> int:
        """Connections that got their whole echo back."""
        return sum(self.served.values())


async def exchange(port: int, payload: bytes, half_close: bool, timeout: float = 10.0,
                   source: str | None = None, host: str = HOST) -> str:
    """One connection: send, (half-close), read to EOF; returns the backend's name.

    Raises ConnectionError for a refused, reset or cut connection (ShortReply: a wrong or
    short echo).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if source is not None:
            sock.bind((source, 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            want = None
            data = bytearray()
            while True:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    break
                data += chunk
                if want is None and b"\n" in data:
                    want = data.index(b"\n") + 1 + len(payload)
                if not half_close and want is not None and len(data) >= want:
                    break
    finally:
        sock.close()
    name, _, echoed = bytes(data).partition(b"\n")
    if not name and not echoed:
        raise ConnectionResetError("closed without a reply")
    if echoed != payload:
        raise ShortReply(f"{name!r} echoed {len(echoed)} of {len(payload)} bytes")
    return name.decode()


async def run_load(port: int, count: int, concurrency: int, payload: bytes = b"x" * 64,
                   deadline: float = 120.0, stop: asyncio.Event | None = None) -> Outcome:
    """`count` connections, `concurrency` at a time, every other one half-closing; ends
    early at the deadline (seconds) or when `stop` is set."""
    outcome = Outcome()
    next_index = 0
    stop_at = time.monotonic() + deadline

    async def worker() -> None:
        nonlocal next_index
        while next_index < count and time.monotonic() < stop_at and not (
                stop is not None and stop.is_set()):
            index = next_index
            next_index += 1
            started = time.monotonic()
            try:
                name = await exchange(port, payload, half_close=index % 2 == 0)
            except (ConnectionError, TimeoutError, OSError) as exc:
                code = getattr(exc, "errno", None)
                outcome.failed[errno.errorcode.get(code, type(exc).__name__)
                               if code else type(exc).__name__] += 1
                outcome.failures_at.append(started)
            else:
                outcome.served[name] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcome
