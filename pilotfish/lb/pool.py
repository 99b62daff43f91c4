"""A route's backends: kept in step with the catalog by diff on (address, port), with health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from pilotfish.catalog.model import Instance
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import Cell, SharedCounts, backend_key

log = logging.getLogger(__name__)

Key = tuple[str, int]


class BackendConnection(Protocol):
    """What a pool and its metrics ask of a connection to one of its backends (an engine's
    `Link` is one)."""

    def close(self) -> None:
        """Close it: its backend left the catalog and the drain time is up."""

    def moved(self) -> tuple[int, int] | None:
        """Bytes read from the client and from the backend; None before the backend is up."""


class Backend:
    """One instance as the balancer sees it: counters, health and ejection survive updates."""

    __slots__ = ("key", "address", "port", "instance", "weight", "serving", "draining",
                 "active", "total", "failed", "bytes_in", "bytes_out", "healthy", "checks_ok",
                 "checks_failed", "failures", "ejected_until", "eject_backoff", "ejections",
                 "current_weight", "connections", "drain_timer", "cell")

    def __init__(self, instance: Instance) -> None:
        self.key: Key = (instance.address, instance.port)
        self.address = instance.address
        self.port = instance.port
        self.instance = instance
        self.weight = instance.weight
        self.serving = instance.serving
        self.draining = False
        self.active = 0
        self.total = 0
        self.failed = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.healthy = True  # active checks' verdict; new instances are trusted until checked
        self.checks_ok = 0
        self.checks_failed = 0
        self.failures = 0  # consecutive connect failures (passive)
        self.ejected_until = 0.0
        self.eject_backoff = 0.0
        self.ejections = 0
        self.current_weight = 0  # smooth weighted round robin state
        self.connections: set[BackendConnection] = set()
        self.drain_timer: asyncio.TimerHandle | None = None
        self.cell: Cell | None = None  # with workers: `active` as every worker counts it

    def add(self, delta: int) -> None:
        """Count a connection to it opened (1) or closed (-1), in every worker's sum too."""
        self.active += delta
        if self.cell is not None:
            self.cell.add(delta)

    def load(self) -> int:
        """Active connections as the pickers weigh them: every worker's, with workers."""
        cell = self.cell
        return self.active if cell is None else cell.total()

    @property
    def name(self) -> str:
        """address:port, as in metrics labels and logs."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"

    def ejected(self, now: float) -> bool:
        """Whether passive ejection keeps it out right now."""
        return self.ejected_until > now


class Pool:
    """The backends of one route; picks candidates for the balancer, applying health rules."""

    def __init__(self, settings: LbSettings, counts: SharedCounts | None = None,
                 scope: str = "") -> None:
        self.settings = settings
        self.counts = counts  # with workers: each backend's row, named by scope and key
        self.scope = scope
        self.on_ejected: Callable[[Backend], None] | None = None  # with workers: tell the rest
        self.backends: dict[Key, Backend] = {}
        self.panic = False
        self.version = 0  # bumped whenever membership or eligibility may have changed
        self._cached: list[Backend] = []
        self._cached_version = -1
        self._cached_until = 0.0

    def update(self, instances: Iterable[Instance]) -> None:
        """Apply a catalog change by diff: new keys join, gone keys drain, the rest update."""
        seen: dict[Key, Instance] = {}
        for instance in instances:
            seen.setdefault((instance.address, instance.port), instance)
        for key, instance in seen.items():
            backend = self.backends.get(key)
            if backend is None:
                backend = self.backends[key] = Backend(instance)
                if self.counts is not None:
                    backend.cell = self.counts.cell(backend_key(self.scope, backend.name))
                continue
            backend.instance = instance
            backend.weight = instance.weight
            backend.serving = instance.serving
            if backend.draining:
                backend.draining = False
                if backend.drain_timer is not None:
                    backend.drain_timer.cancel()
                    backend.drain_timer = None
        for key, backend in list(self.backends.items()):
            if key not in seen and not backend.draining:
                self._drain(backend)
        self.version += 1

    def _drain(self, backend: Backend) -> None:
        backend.draining = True
        if not backend.connections:
            del self.backends[backend.key]
            self._release(backend)
            return
        timeout = self.settings.drain_timeout
        backend.drain_timer = asyncio.get_running_loop().call_later(
            timeout, self._drained, backend)

    def _drained(self, backend: Backend) -> None:
        backend.drain_timer = None
        self.version += 1
        for connection in list(backend.connections):
            connection.close()
        self.forget(backend)

    def forget(self, backend: Backend) -> None:
        """Drop a draining backend once its last connection has gone."""
        if backend.draining and not backend.connections and \
                self.backends.get(backend.key) is backend:
            if backend.drain_timer is not None:
                backend.drain_timer.cancel()
            del self.backends[backend.key]
            self._release(backend)
            self.version += 1

    def _release(self, backend: Backend) -> None:
        """Give back a dropped backend's shared row, less what it still counts (dials)."""
        cell = backend.cell
        if cell is not None and self.counts is not None:
            backend.cell = None
            cell.add(-backend.active)
            self.counts.release(cell)

    def release(self) -> None:
        """Give back every backend's shared row: the route is gone and has no connection."""
        for backend in self.backends.values():
            self._release(backend)

    def close(self) -> None:
        """Cancel drain timers (the route is gone or the process stops)."""
        for backend in self.backends.values():
            if backend.drain_timer is not None:
                backend.drain_timer.cancel()
                backend.drain_timer = None

    def serving(self) -> list[Backend]:
        """Backends the catalog says to serve (present and not critical)."""
        return [b for b in self.backends.values() if b.serving and not b.draining]

    def candidates(self) -> list[Backend]:
        """Serving backends that are healthy and not ejected; all serving ones in panic mode.

        Cached until the pool changes (`version`) or the next ejection ends.
        """
        if self._cached_version == self.version:
            if not self._cached_until or time.monotonic() < self._cached_until:
                return self._cached
        serving = self.serving()
        now = time.monotonic()
        healthy = [b for b in serving if b.healthy and not b.ejected(now)]
        ends = [b.ejected_until for b in serving if b.ejected(now)]
        self._cached_until = min(ends) if ends else 0.0
        self._cached_version = self.version
        panic = len(healthy) < len(serving) * self.settings.panic_below or not healthy
        if panic != self.panic and serving:
            self.panic = panic
            if panic:
                log.warning("lb: %d of %d instances healthy: panic mode, using all",
                            len(healthy), len(serving))
        self._cached = serving if panic else healthy
        return self._cached

    def connect_failed(self, backend: Backend) -> None:
        """Passive health: count a failed connect; eject with growing backoff past the limit."""
        backend.failed += 1
        backend.failures += 1
        settings = self.settings
        if settings.eject_after <= 0 or backend.failures < settings.eject_after:
            return
        now = time.monotonic()
        if backend.ejected(now):
            return
        serving = self.serving()
        ejected = sum(1 for b in serving if b.ejected(now))
        if ejected + 1 > len(serving) * settings.max_ejected:
            return  # the cap: never eject more than this share of the pool
        backoff = settings.eject_base if backend.eject_backoff == 0 else \
            min(backend.eject_backoff * 2, settings.eject_max)
        backend.eject_backoff = backoff
        backend.ejected_until = now + backoff
        backend.ejections += 1
        self.version += 1
        log.info("lb: ejected %s for %.1fs after %d failed connects", backend.name, backoff,
                 backend.failures)
        if self.on_ejected is not None:
            self.on_ejected(backend)

    def eject(self, key: Key, until: float, backoff: float) -> None:
        """Apply an ejection another worker made (`until` on the machine's monotonic clock;
        counted in `ejections` by the worker that made it only, so sums stay exact)."""
        backend = self.backends.get(key)
        if backend is None or backend.ejected_until >= until:
            return
        backend.ejected_until = until
        backend.eject_backoff = backoff
        self.version += 1

    def set_health(self, down: set[Key]) -> None:
        """Apply the active checks' verdicts made elsewhere (the parent): `down` are down."""
        changed = False
        for key, backend in self.backends.items():
            healthy = key not in down
            if backend.healthy != healthy:
                backend.healthy = healthy
                changed = True
        if changed:
            self.version += 1

    def connect_succeeded(self, backend: Backend) -> None:
        """A connect worked: the failure streak and the ejection backoff start over."""
        if backend.failures:
            backend.failures = 0
            backend.eject_backoff = 0.0
