"""The parent's side of the view: its one CatalogView's snapshots, shipped to every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.view import CatalogView
from pilotfish.loop import cancel_and_wait
from pilotfish.workers.channel import encode
from pilotfish.workers.diff import ViewDiff, ViewState, between, full

Send = Callable[[bytes], None]
"""Sends a worker one encoded ("tell", "view", diff) frame."""
STALE_POLL = 0.05  # seconds: how often the view's freshness is compared (it has no callback)


class ViewShipper:
    """Subscribes once to the parent's view and sends each change, as a diff, to every worker.

    Every worker is sent the diff from the same last-shipped snapshot, so the diff is computed
    and encoded once per change whatever the number of workers; a worker that (re)starts gets the
    last-shipped snapshot whole, and every diff after it.
    """

    def __init__(self, view: CatalogView) -> None:
        self.view = view
        self.shipped = Snapshot(0, ())
        self._state = self._now()
        self._receivers: dict[int, Send] = {}
        self._task: asyncio.Task[None] | None = None
        self.diffs = 0  # shipped changes, for metrics

    def _now(self) -> ViewState:
        view = self.view
        return ViewState(view.ready.is_set(), view.stale, view.stale_since, view.changed_at)

    def start(self) -> None:
        """Subscribe to the view, and watch its freshness."""
        self.view.subscribe(self._on_snapshot)
        self._task = asyncio.create_task(self._watch_freshness(), name="view-shipper")

    async def stop(self) -> None:
        """Stop watching freshness (the subscription ends with the view)."""
        await cancel_and_wait(self._task)
        self._task = None

    def attach(self, worker: int, send: Send) -> ViewDiff:
        """Ship every later change to `send`; returns the full state to start it with."""
        self._receivers[worker] = send
        return full(self.shipped, self._state)

    def detach(self, worker: int) -> None:
        """Stop shipping to a worker (it died or is stopping)."""
        self._receivers.pop(worker, None)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        state = self._now()
        diff = between(self.shipped, snapshot, state)
        self.shipped, self._state = snapshot, state
        self._ship(diff)

    def _ship(self, diff: ViewDiff) -> None:
        self.diffs += 1
        if self._receivers:
            frame = encode(("tell", "view", diff))
            for send in list(self._receivers.values()):
                send(frame)

    async def _watch_freshness(self) -> None:
        while True:
            await asyncio.sleep(STALE_POLL)
            state = self._now()
            if (state.stale, state.stale_since, state.ready) != (
                    self._state.stale, self._state.stale_since, self._state.ready):
                self._state = state
                self._ship(ViewDiff(self.shipped.index, (), (), state))
