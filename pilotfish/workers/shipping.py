"""The parent's side of the view: its one CatalogView's snapshots, shipped to every worker."""

from __future__ import annotations

from collections.abc import Callable

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.view import CatalogView
from pilotfish.workers.channel import encode
from pilotfish.workers.diff import ViewDiff, ViewState, between, full

Send = Callable[[bytes], None]
"""Sends a worker one encoded ("tell", "view", diff) frame."""


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

    def _now(self) -> ViewState:
        view = self.view
        return ViewState(view.ready.is_set(), view.stale, view.stale_since, view.changed_at)

    def start(self) -> None:
        """Follow the view's snapshots and its freshness."""
        self.view.subscribe(self._on_snapshot)
        self.view.on_freshness(self._on_freshness)

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
        if self._receivers:
            frame = encode(("tell", "view", diff))
            for send in list(self._receivers.values()):
                send(frame)

    def _on_freshness(self) -> None:
        self._state = self._now()
        self._ship(ViewDiff(self.shipped.index, (), (), self._state))
