"""The LB component: owns the routes and their pools, starts the engine that carries them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import resource
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.view import Subscriber
from pilotfish.config import ConfigError
from pilotfish.lb.engine import Engine
from pilotfish.lb.epoll.engine import EpollEngine
from pilotfish.lb.gate import Occupancy, RouteGate
from pilotfish.lb.health import check_forever
from pilotfish.lb.pool import Pool
from pilotfish.lb.routes import Route, check_overlap, read_routes_file, shown
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import SharedCounts
from pilotfish.lb.stats import describe, samples
from pilotfish.lb.transports.engine import TransportsEngine
from pilotfish.loop import cancel_and_wait
from pilotfish.metrics import Metrics, Sample

log = logging.getLogger(__name__)


class View(Protocol):
    """What the balancer reads of a catalog view: the process's CatalogView, or a worker's
    replica of the parent's (pilotfish.workers)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def stale(self) -> bool: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class Host(Protocol):
    """What the balancer takes from its process: the Stack, or a worker's stand-in."""

    metrics: Metrics

    def view(self) -> View: ...

    def on_sighup(self, callback: Callable[[], object]) -> None: ...


class LoadBalancer:
    """Routes clients to healthy instances; routes change at run time, one by one.

    Build it from the process's Stack (one shared CatalogView and metrics registry), the
    initial routes and the settings; `routes_file` is re-read on SIGHUP. With workers
    (pilotfish.lb.fleet, pilotfish.lb.worker): `counts` are every worker's connection counts,
    and `engine` makes what carries the connections (the parent's only holds the ports).
    """

    def __init__(self, stack: Host, routes: Iterable[Route], settings: LbSettings | None = None,
                 routes_file: str | None = None, counts: SharedCounts | None = None,
                 engine: Callable[[], Engine] | None = None) -> None:
        self.stack = stack
        self.view = stack.view()
        self.settings = settings or LbSettings()
        self.routes_file = routes_file
        self.gates: dict[str, RouteGate] = {}  # each route's gate, by listen address
        self.draining: set[RouteGate] = set()  # removed routes whose connections finish
        self.occupancy = Occupancy(counts)
        self._make_engine = engine
        self._initial = list(routes)
        self._from_file: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.engine: Engine | None = None  # what carries the connections, once started
        describe(stack.metrics, self.samples)

    @property
    def snapshot(self) -> Snapshot:
        """The latest catalog snapshot the balancer follows."""
        return self.view.snapshot

    async def start(self) -> None:
        """Start the engine, the routes (every one must bind), the checks and SIGHUP reloading."""
        self.view.subscribe(self._on_snapshot)
        if self._make_engine is not None:
            self.engine = self._make_engine()
        else:
            self.engine = EpollEngine(asyncio.get_running_loop()) \
                if self.settings.engine == "epoll" else TransportsEngine()
        routes: list[Route] = []
        for route in self._initial:
            check_overlap(route, routes)
            routes.append(route)
        if self.routes_file:
            for route in read_routes_file(self.routes_file):
                check_overlap(route, routes)
                routes.append(route)
                self._from_file.add(route.key)
        try:
            for route in routes:
                try:
                    await self.put_route(route)
                except OSError as exc:
                    raise ConfigError(f"{route.origin}: cannot listen on {route.key}: "
                                      f"{exc.strerror or exc}") from exc
        except BaseException:
            await self._close_all()
            raise
        if self.view.stale:
            log.warning("lb: catalog not reachable yet; routes have no instances until it is")
        if self.settings.check_interval > 0:
            self._tasks.append(asyncio.create_task(
                check_forever(self._pools, self.settings), name="lb-health"))
        self._tasks.append(asyncio.create_task(self._sweep_idle(), name="lb-idle"))
        if self.routes_file:
            self.stack.on_sighup(self._on_sighup)
        self._check_file_limit()
        gc.freeze()  # what start-up made lives forever: full collections skip it (no stalls)

    def _check_file_limit(self) -> None:
        """Raise the open-files limit to its hard cap; warn when the connection limit needs
        more descriptors than that (each connection holds two)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
        needed = 2 * self.settings.max_connections + 256
        if soft != resource.RLIM_INFINITY and soft < needed:
            log.warning("lb: --lb-max-connections %d needs %d open files, the limit is %d",
                        self.settings.max_connections, needed, soft)

    def _pools(self) -> list[Pool]:
        return [gate.pool for gate in self.gates.values()]

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        for gate in self.gates.values():
            gate.update(snapshot)

    def routes(self) -> list[Route]:
        """The routes in force, by listen address."""
        return [self.gates[key].route for key in sorted(self.gates)]

    async def put_route(self, route: Route) -> bool:
        """Add a route (True) or change the one on that address in place (False)."""
        async with self._lock:
            existing = self.gates.get(route.key)
            if existing is not None:
                existing.reconfigure(route, self.snapshot)
                return False
            self.gates[route.key] = await self._listen(route)
            return True

    async def _listen(self, route: Route) -> RouteGate:
        """A new route's gate, accepting on the engine and fed the current snapshot (OSError:
        not bound)."""
        assert self.engine is not None, "start() first"
        gate = RouteGate(route, self.settings, self.occupancy, self._route_drained)
        await gate.open(self.engine)
        gate.update(self.snapshot)
        return gate

    async def delete_route(self, key: str) -> bool:
        """Stop accepting on a route; its open connections drain (up to the drain timeout)."""
        async with self._lock:
            return self._remove(key)

    def _remove(self, key: str) -> bool:
        gate = self.gates.pop(key, None)
        if gate is None:
            return False
        self._from_file.discard(key)
        gate.stop_accepting()
        log.info("lb route %s removed; %d connections draining", key, len(gate.connections))
        if gate.connections:
            self.draining.add(gate)
            asyncio.get_running_loop().call_later(
                self.settings.drain_timeout, self._drain_expired, gate)
        return True

    def _drain_expired(self, gate: RouteGate) -> None:
        for connection in list(gate.connections):
            connection.close()

    def _route_drained(self, gate: RouteGate) -> None:
        """A removed route's last connection has ended."""
        self.draining.discard(gate)

    def _on_sighup(self) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.create_task(self._reload(), name="lb-reload"))

    async def _reload(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # a bug, not a bad file: say so now, in one line
            log.error("lb: routes file not reloaded, the current routes stay: %s",
                      shown(exc))

    async def _in_force(self) -> None:
        """The routes changed here serve now (a fleet also waits for its workers)."""

    async def reload(self) -> bool:
        """Re-read the routes file and apply it whole or not at all: the file is checked
        first, every new address bound next (one that cannot be closes the others again),
        and only then are routes changed and removed."""
        if not self.routes_file:
            return False
        try:
            wanted = read_routes_file(self.routes_file)
        except ConfigError as exc:
            log.error("lb: routes file not reloaded, the current routes stay: %s", exc)
            return False
        async with self._lock:
            keys = {route.key for route in wanted}
            removed = sorted(self._from_file - keys)
            changed = [route for route in wanted if route.key in self.gates
                       and self.gates[route.key].route != route]
            bound: dict[str, RouteGate] = {}
            for route in wanted:
                if route.key in self.gates:
                    continue
                try:
                    bound[route.key] = await self._listen(route)
                except Exception as exc:
                    for gate in bound.values():
                        self._close(gate)
                    reason = exc.strerror if isinstance(exc, OSError) else None
                    log.error("lb: routes file not reloaded, the current routes stay: %s: "
                              "cannot listen on %s: %s", route.origin, route.key,
                              reason or shown(exc))
                    return False
            for route in changed:
                self.gates[route.key].reconfigure(route, self.snapshot)
            self.gates.update(bound)
            for key in removed:
                self._remove(key)
            self._from_file = keys
        await self._in_force()
        log.info("lb: routes file reloaded from %s: %d added, %d changed, %d removed; %d "
                 "routes running", self.routes_file, len(bound), len(changed), len(removed),
                 len(self.gates))
        return True

    def _close(self, gate: RouteGate) -> None:
        """Close a route that never joined the routes, and any client it let in."""
        gate.stop_accepting()
        for connection in list(gate.connections):
            connection.abort()

    async def _sweep_idle(self) -> None:
        idle = self.settings.idle_timeout
        if idle <= 0:
            return
        tick = min(1.0, idle / 10)
        limit = math.ceil(idle / tick)
        while True:
            await asyncio.sleep(tick)
            for gate in [*self.gates.values(), *self.draining]:
                for connection in list(gate.connections):
                    counts = connection.moved()
                    if counts is None:
                        continue
                    moved = counts[0] + counts[1]
                    if moved != connection.seen:
                        connection.seen = moved
                        connection.idle = 0
                    else:
                        connection.idle += 1
                        if connection.idle >= limit:
                            connection.close()

    def open_files_needed(self) -> int:
        """Descriptors it may hold: two per connection, plus listeners and checks
        (pilotfish.fds)."""
        return 2 * self.settings.max_connections + 64

    async def stop(self) -> None:
        """Graceful stop: accept no more, let connections finish (up to the stop timeout)."""
        occupancy = self.occupancy
        occupancy.stopping = True
        for gate in [*self.gates.values(), *self.draining]:
            gate.stop_accepting()
        if occupancy.active:
            occupancy.all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(occupancy.all_closed.wait(), self.settings.stop_timeout)
        if occupancy.active:
            log.warning("lb: %d connections still open after %.0fs; closing them",
                        occupancy.active, self.settings.stop_timeout)
        await self._close_all()

    async def _close_all(self) -> None:
        for gate in [*self.gates.values(), *self.draining]:
            gate.stop_accepting()
            for connection in list(gate.connections):
                connection.abort()
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await asyncio.sleep(0)
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def samples(self) -> Iterable[Sample]:
        """Prometheus samples for every route and instance, read at scrape time."""
        return samples([*self.gates.values(), *self.draining], self.occupancy.active)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the catalog view is current (the LB keeps serving the last view)."""
        stale = self.view.stale
        return not stale, {"status": "stale" if stale else "ok", "routes": len(self.gates),
                           "connections": self.occupancy.active}
