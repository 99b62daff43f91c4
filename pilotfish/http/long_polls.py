"""The app's side of long-poll admission: a blocking read holds a slot of its listener while it
waits, and answers at once when the listener takes the slot back to make room.

Each connection of an HTTP listener (pilotfish.http.protocol, under pilotfish.http.limits) puts
itself in its requests' ASGI scope as their WaitSlot; an app served some other way (a test
transport) gets none, and its long-polls are not limited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

SCOPE_KEY = "pilotfish.long_poll"  # in scope["extensions"]
RETRY_AFTER = 1  # seconds a reader refused for want of a slot is told to wait


class TooManyWaiting(Exception):
    """Every long-poll slot of the listener is taken: answer 503 with Retry-After."""

    def __init__(self) -> None:
        super().__init__("too many blocking reads waiting on this listener; retry")


class WaitSlot(Protocol):
    """A connection's right to wait: the listener grants it while its long-poll share lasts."""

    def begin_wait(self) -> asyncio.Future[None]:
        """Wait from now on; the future resolves when the poll must answer now.
        Raises TooManyWaiting when the listener's share of waiting reads is full."""
        ...

    def end_wait(self) -> None:
        """The poll is done waiting (answered, or its client gone)."""
        ...


def slot_of(scope: Mapping[str, Any]) -> WaitSlot | None:
    """The request's wait slot, if its listener limits long-polls."""
    extensions = scope.get("extensions") or {}
    slot: WaitSlot | None = extensions.get(SCOPE_KEY)
    return slot


@contextmanager
def waiting(slot: WaitSlot | None) -> Iterator[asyncio.Future[None]]:
    """Hold `slot` while the block waits; yields a future that resolves when the poll must
    answer at once with what it has (the listener needs the connection for someone else)."""
    if slot is None:
        yield asyncio.get_running_loop().create_future()  # never resolved
        return
    early = slot.begin_wait()
    try:
        yield early
    finally:
        slot.end_wait()
