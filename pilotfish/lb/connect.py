"""One connect attempt toward a backend, driven by callbacks: no Task, a plain timer.

A new client costs the balancer a backend connect. Driving the loop's `create_connection`
coroutine from the futures it waits on (as a Task would, minus the Task) and timing it out
with one `call_later` instead of `asyncio.timeout` keeps that path short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from pilotfish.lb.proxy import Side

if TYPE_CHECKING:
    from pilotfish.lb.listener import RouteListener
    from pilotfish.lb.pool import Backend
    from pilotfish.lb.proxy import Connection


class Attempt:
    """Connects a client's backend side; tells the listener `connected` or `failed`.

    The caller records the attempt on its connection, then calls `step()` to start it.
    """

    __slots__ = ("listener", "connection", "backend", "server", "coro", "waiting", "timer")

    def __init__(self, listener: RouteListener, connection: Connection, backend: Backend,
                 loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.listener = listener
        self.connection = connection
        self.backend = backend
        self.server = Side(connection, connection.client)  # the backend may speak first
        self.waiting: asyncio.Future[Any] | None = None
        self.coro: Coroutine[Any, Any, Any] = loop.create_connection(
            self._protocol, backend.address, backend.port)
        self.timer = loop.call_later(timeout, self.cancel)

    def _protocol(self) -> Side:
        return self.server

    def step(self, _: object = None) -> None:
        """Run the connect coroutine to its next wait (a future), or to its end."""
        self.waiting = None
        try:
            waiting = self.coro.send(None)
        except StopIteration:
            self.timer.cancel()
            self._connected()
            return
        except (Exception, asyncio.CancelledError) as exc:  # refused, timed out, client gone
            self.timer.cancel()
            connection = self.connection
            connection.attempt = None
            if connection.closed and self.server.transport is not None:
                self.server.transport.abort()  # the client left while we connected
            self.listener.failed(connection, self.backend, exc)
            return
        if waiting is None:  # a bare yield: go on at the next loop turn
            asyncio.get_running_loop().call_soon(self.step)
            return
        waiting._asyncio_future_blocking = False
        waiting.add_done_callback(self.step)
        self.waiting = waiting

    def _connected(self) -> None:
        connection = self.connection
        connection.attempt = None
        transport = self.server.transport
        alive = transport is not None and not transport.is_closing()
        first = self.listener.connected(connection, self.backend, alive)
        if first is None:
            if transport is not None:
                transport.close()
            return
        if first:
            transport.write(first)  # type: ignore[union-attr]
        connection.attach(self.server, self.backend)

    def cancel(self) -> None:
        """Stop waiting (the connect timeout, or the client left): step() reports a failure."""
        self.timer.cancel()
        waiting = self.waiting
        if waiting is not None:
            waiting.cancel()
