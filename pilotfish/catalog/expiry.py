"""Snapshots that drop instances at their lease's expiry, for backends that expire lazily.

Expiry is applied only while the reader can prove its cache is current
(docs/architecture.md guarantee 3): `Freshness` records the last proof a backend gave (a
watch progress answer, a sync, a blocking read that returned) and freezes the expiry clock when that
proof grows older than its bound, so a reader cut off from its backend keeps its last
view instead of expiring every lease whose renewal it cannot see.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance

ExpiryOf = Callable[[str], "float | None"]

FRESH_BOUND = 1.0  # expiry runs only while the cache was proven current this recently
RECOVERY_GRACE = 2.0  # after a stale spell, leases that ran out meanwhile get this long


class Freshness:
    """When the backend last proved this reader's cache current, and the expiry clock from it.

    While the last proof is at most `bound` seconds old, `clock()` is the wall clock.
    Older, the clock stops at proof + bound: nothing expires that the reader cannot see
    being renewed. When proof returns after such a stale spell, expiry catches up at
    once, except that a lease that ran out during the spell stays served until `grace`
    after the proof: the fault that hid renewals from this reader (a frozen leader, a
    lost quorum) usually stopped every registrar's writes too, and a live registrar
    renews or registers again within one retry (0.5 s) plus one call once writes are
    back. Without that grace a write outage longer than a TTL would empty the catalog
    at the moment the backend returns (issue 16's frozen leader).

    The bound must stay below the smallest TTL minus the keepalive interval (2/3 of a
    TTL of 2 s is 1.33 s): a live lease's expiry, as last seen, is then always later
    than the frozen clock.
    """

    def __init__(self, bound: float = FRESH_BOUND, grace: float = RECOVERY_GRACE) -> None:
        self.bound = bound
        self.grace = grace
        self._proof_mono: float | None = None
        self._proof_wall = 0.0
        self._window: tuple[float, float] | None = None  # last stale spell (wall clock)
        self._listeners: list[Callable[[], None]] = []
        self.stale_spells = 0  # how often proof came back after a stale spell

    def on_recovery(self, listener: Callable[[], None]) -> None:
        """Call listener whenever proof returns after a stale spell (rebuild, wake watchers)."""
        self._listeners.append(listener)

    def proved(self, at: float | None = None) -> None:
        """The backend showed the cache current as of `at` (time.monotonic(); default now)."""
        now = time.monotonic()
        at = now if at is None else min(at, now)
        if self._proof_mono is not None and at <= self._proof_mono:
            return
        recovered = self._proof_mono is not None and at - self._proof_mono > self.bound
        wall = time.time() - (now - at)
        if recovered:
            self._window = (self._proof_wall + self.bound, wall)
            self.stale_spells += 1
        self._proof_mono, self._proof_wall = at, wall
        if recovered:
            for listener in self._listeners:
                listener()

    def forget(self) -> None:
        """No proof at all any more (a new connection will prove itself from scratch)."""
        if self._proof_mono is not None:
            self._proof_mono = min(self._proof_mono, time.monotonic() - self.bound - 1e-3)

    def age(self) -> float:
        """Seconds since the last proof (infinite before the first)."""
        if self._proof_mono is None:
            return math.inf
        return time.monotonic() - self._proof_mono

    @property
    def stale(self) -> bool:
        """Whether the last proof is older than the bound: expiry is frozen."""
        return self.age() > self.bound

    def clock(self) -> float:
        """The wall-clock time up to which expiry may be applied now."""
        now = time.time()
        if self._proof_mono is None or not self.stale:
            return now
        return min(now, self._proof_wall + self.bound)

    def expiry(self, expires_at: float) -> float:
        """A lease's effective expiry: one that ran out during the last stale spell gets
        until `grace` after the proof that ended it."""
        window = self._window
        if window is not None and window[0] <= expires_at < window[1] + self.grace:
            return window[1] + self.grace
        return expires_at

    def alive(self, expires_at: float) -> bool:
        """Whether a lease with that expiry may still be served now."""
        return self.expiry(expires_at) > self.clock()


class ExpiringSnapshots:
    """Builds a backend's snapshots from its cache, filtering by lease expiry (wall clock).

    ZooKeeper and Consul keep lapsed entries until someone deletes them, so readers filter
    themselves (docs/architecture.md guarantee 1). The backend calls `changed()` whenever
    its cache changes; `build()` rebuilds only then or once the first served lease lapses, moves the
    index only when what is served differs, and a timer wakes watchers at that expiry.
    With a `Freshness`, expiry stops while the cache is not proven current (no timer then:
    proof coming back rebuilds).
    """

    def __init__(self, notify: Callable[[], None], freshness: Freshness | None = None) -> None:
        self.index = 0
        self._notify = notify
        self._snapshot: Snapshot | None = None
        self._valid_until = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self.freshness = freshness
        if freshness is not None:
            freshness.on_recovery(self.changed)

    def changed(self) -> None:
        """The cache changed: rebuild on the next read and wake the watchers."""
        self._valid_until = -math.inf
        self._notify()

    def build(self, instances: Iterable[Instance], expiry_of: ExpiryOf) -> Snapshot:
        """The current snapshot: every instance whose lease is known and not yet lapsed."""
        freshness = self.freshness
        now = time.time() if freshness is None else freshness.clock()
        if self._snapshot is not None and now < self._valid_until:
            return self._snapshot
        served: dict[str, Instance] = {}
        until = math.inf
        for instance in instances:
            expires = expiry_of(instance.lease)
            if expires is not None and freshness is not None:
                expires = freshness.expiry(expires)
            if expires is not None and expires > now:
                served[instance.id] = instance
                until = min(until, expires)
        if self._snapshot is None or served != self._snapshot.instances:
            self.index += 1
            self._snapshot = Snapshot(self.index, served)
        self._valid_until = until
        if freshness is not None and freshness.stale:
            self.close()  # the clock is stopped; proof coming back rebuilds
        else:
            self._arm(until - time.time())
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
