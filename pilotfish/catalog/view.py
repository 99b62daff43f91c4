"""A local copy of the catalog fed by watch, so no query or connection waits on a backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from pilotfish.catalog.interface import Catalog, Snapshot
from pilotfish.loop import cancel_and_wait

log = logging.getLogger(__name__)

Subscriber = Callable[[Snapshot], None]
"""Called with each new snapshot the view takes in (a DNS zone, the LB's pools)."""


class ViewReader(Protocol):
    """What DNS and the LB read of a view: a CatalogView in the process that follows the
    catalog, a pilotfish.workers.replica.ReplicaView in a worker process."""

    snapshot: Snapshot
    stale: bool
    stale_since: float | None
    changed_at: float | None
    ready: asyncio.Event

    def subscribe(self, subscriber: Subscriber) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


RETRY_FLOOR = 0.05  # never retry a failing backend in a tighter loop than this


class CatalogView:
    """Keeps the latest snapshot and tells subscribers; keeps the last while the backend fails."""

    def __init__(self, catalog: Catalog, wait: float = 30.0, retry: float = 1.0) -> None:
        self.catalog = catalog
        self.snapshot = Snapshot(0, ())
        self.stale = True  # until the first snapshot arrives, and while the backend is down
        self.stale_since: float | None = time.time()  # wall clock; None while current
        self.changed_at: float | None = None  # wall clock of the last snapshot published
        self.ready = asyncio.Event()
        self._wait = wait
        self._retry = retry
        self._subscribers: list[Subscriber] = []
        self._task: asyncio.Task[None] | None = None
        self.start_waits = True  # start() returns only once the first snapshot is in
        self._freshness: list[Callable[[], None]] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` with every new snapshot (and now, if one is already here)."""
        self._subscribers.append(subscriber)
        if self.ready.is_set():
            subscriber(self.snapshot)

    async def start(self) -> None:
        """Begin following the catalog; returns once the first snapshot is in (or it failed),
        or at once when nothing needs to wait for it (`start_waits`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="catalog-view")
        if not self.start_waits:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), self._wait)

    async def stop(self) -> None:
        """Stop following."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _follow(self) -> None:
        while True:
            generation = self.catalog.changes.generation
            try:
                if self.stale and self.ready.is_set():
                    # One read proves the backend answers again, even when nothing changed
                    # meanwhile (a watch would then block for its whole wait).
                    snapshot = await self.catalog.snapshot()
                else:
                    snapshot = await self.catalog.watch(self.snapshot.index, self._wait)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any backend failure: fail static, retry
                if not self.stale:
                    log.warning("catalog unreachable, serving the last view: %s", exc)
                    self.stale_since = time.time()
                    self.stale = True
                    self._freshness_changed()
                # Catch up as soon as the backend says it is back (it signals a change),
                # or retry after `retry` at the latest.
                await asyncio.sleep(min(RETRY_FLOOR, self._retry))
                await self.catalog.changes.wait_past(generation, self._retry)
                continue
            was_stale = self.stale
            if was_stale and self.ready.is_set():
                log.info("catalog reachable again at index %d", snapshot.index)
            self.stale = False
            self.stale_since = None
            if snapshot.index != self.snapshot.index or not self.ready.is_set():
                self._publish(snapshot)
            elif was_stale:
                self._freshness_changed()

    def on_freshness(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the view turns stale, or fresh again without a new snapshot
        (a new snapshot goes to the subscribers)."""
        self._freshness.append(callback)

    def _freshness_changed(self) -> None:
        for callback in self._freshness:
            try:
                callback()
            except Exception:
                log.exception("view freshness callback failed")

    def _publish(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.changed_at = time.time()
        self.ready.set()
        tell(self._subscribers, snapshot)


def tell(subscribers: list[Subscriber], snapshot: Snapshot) -> None:
    """Hand every subscriber the new snapshot; one that fails is logged, the rest still hear."""
    for subscriber in subscribers:
        try:
            subscriber(snapshot)
        except Exception:
            log.exception("view subscriber failed")
