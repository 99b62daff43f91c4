"""Snapshots that drop instances at their lease's expiry, for backends that expire lazily."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

from pilotfish.registry.catalog import Snapshot
from pilotfish.registry.model import Instance

ExpiryOf = Callable[[str], "float | None"]


class ExpiringSnapshots:
    """Builds a backend's snapshots from its cache, filtering by lease expiry (wall clock).

    ZooKeeper and Consul keep lapsed entries until someone deletes them, so readers filter
    themselves (DESIGN.md guarantee 1). The backend calls `changed()` whenever its cache
    changes; `build()` rebuilds only then or once the first served lease lapses, moves the
    index only when what is served differs, and a timer wakes watchers at that expiry.
    """

    def __init__(self, notify: Callable[[], None]) -> None:
        self.index = 0
        self._notify = notify
        self._snapshot: Snapshot | None = None
        self._valid_until = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        """The cache changed: rebuild on the next read and wake the watchers."""
        self._valid_until = -math.inf
        self._notify()

    def build(self, instances: Iterable[Instance], expiry_of: ExpiryOf) -> Snapshot:
        """The current snapshot: every instance whose lease is known and not yet lapsed."""
        now = time.time()
        if self._snapshot is not None and now < self._valid_until:
            return self._snapshot
        served: dict[str, Instance] = {}
        until = math.inf
        for instance in instances:
            expires = expiry_of(instance.lease)
            if expires is not None and expires > now:
                served[instance.id] = instance
                until = min(until, expires)
        if self._snapshot is None or served != self._snapshot.instances:
            self.index += 1
            self._snapshot = Snapshot(self.index, served)
        self._valid_until = until
        self._arm(until - now)
        return self._snapshot

    def close(self) -> None:
        """Stop the expiry timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        self.close()
        if delay != math.inf:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, delay) + 0.002, self._notify)
