"""One connect attempt toward a backend, driven by callbacks: no Task, a plain timer.

A new client costs the balancer a backend connect. Driving the loop's `create_connection`
coroutine from the futures it waits on (as a Task would, minus the Task) and timing it out
with one `call_later` instead of `asyncio.timeout` keeps that path short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, Protocol, TypeVar

from pilotfish.lb.pool import Backend

S = TypeVar("S", bound=asyncio.Protocol)


class Dialer(Protocol[S]):
    """What an attempt reports to: the connection whose backend side it connects."""

    def dialed(self, attempt: Attempt[S]) -> None:
        """Connected: `attempt.server` has its transport."""

    def dial_failed(self, attempt: Attempt[S], error: BaseException) -> None:
        """Refused, timed out, or cancelled (the client left)."""


class Attempt(Generic[S]):
    """Connects `server` (the protocol of a connection's backend side) to `backend`; tells
    the dialer `dialed` or `dial_failed`.

    The caller records the attempt on its connection, then calls `step()` to start it.
    """

    __slots__ = ("dialer", "backend", "server", "coro", "waiting", "timer")

    def __init__(self, dialer: Dialer[S], backend: Backend, server: S,
                 loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.dialer = dialer
        self.backend = backend
        self.server = server
        self.waiting: asyncio.Future[Any] | None = None
        self.coro: Coroutine[Any, Any, Any] = loop.create_connection(
            self._protocol, backend.address, backend.port)
        self.timer = loop.call_later(timeout, self.cancel)

    def _protocol(self) -> S:
        return self.server

    def step(self, _: object = None) -> None:
        """Run the connect coroutine to its next wait (a future), or to its end."""
        self.waiting = None
        try:
            waiting = self.coro.send(None)
        except StopIteration:
            self.timer.cancel()
            self.dialer.dialed(self)
            return
        except (Exception, asyncio.CancelledError) as exc:  # refused, timed out, client gone
            self.timer.cancel()
            self.dialer.dial_failed(self, exc)
            return
        if waiting is None:  # a bare yield: go on at the next loop turn
            asyncio.get_running_loop().call_soon(self.step)
            return
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(self.step)
        self.waiting = waiting

    def cancel(self) -> None:
        """Stop waiting (the connect timeout, or the client left): step() reports a failure."""
        self.timer.cancel()
        waiting = self.waiting
        if waiting is not None:
            waiting.cancel()
