"""A worker's copy of the parent's view, with CatalogView's reader interface."""

from __future__ import annotations

import asyncio

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.view import Subscriber, tell
from pilotfish.workers.diff import ViewDiff, apply


class ReplicaView:
    """What DnsServer and the LB read in a worker, fed by the parent's diffs (not a watch).

    It has the attributes and methods they use of CatalogView (snapshot, stale, stale_since,
    changed_at, ready, subscribe, start, stop), so they take it unchanged: the parent follows
    the backend once for every worker, and every worker serves the same index.
    """

    def __init__(self) -> None:
        self.snapshot = Snapshot(0, ())
        self.stale = True
        self.stale_since: float | None = None
        self.changed_at: float | None = None
        self.ready = asyncio.Event()
        self.start_waits = False
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` with every new snapshot (and now, if one is already here)."""
        self._subscribers.append(subscriber)
        if self.ready.is_set():
            subscriber(self.snapshot)

    async def start(self) -> None:
        """Nothing to follow: the parent ships the view."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def receive(self, diff: ViewDiff) -> None:
        """Take in what the parent shipped; tell subscribers when the instances moved."""
        state = diff.state
        self.stale, self.stale_since = state.stale, state.stale_since
        if not state.ready:
            return
        first = not self.ready.is_set()
        snapshot = apply(self.snapshot, diff)
        if snapshot is self.snapshot and not first:
            return
        self.snapshot = snapshot
        self.changed_at = state.changed_at
        self.ready.set()
        tell(self._subscribers, snapshot)
