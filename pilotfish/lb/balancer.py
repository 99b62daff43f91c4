"""The LB component: one listener per route, pools fed by the process's catalog view."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import resource
from collections.abc import Iterable
from typing import Any

from pilotfish.catalog.interface import Snapshot
from pilotfish.config import ConfigError
from pilotfish.lb.fastpath import Engine, FastListener
from pilotfish.lb.health import check_forever
from pilotfish.lb.listener import RouteListener
from pilotfish.lb.pool import Pool
from pilotfish.lb.routes import Route, check_overlap, read_routes_file, shown
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.stats import describe, samples
from pilotfish.loop import cancel_and_wait
from pilotfish.metrics import Sample
from pilotfish.stack import Stack

log = logging.getLogger(__name__)


class LoadBalancer:
    """Routes clients to healthy instances; routes change at run time, listener by listener.

    Build it from the process's Stack (one shared CatalogView and metrics registry), the
    initial routes and the settings; `routes_file` is re-read on SIGHUP.
    """

    def __init__(self, stack: Stack, routes: Iterable[Route], settings: LbSettings | None = None,
                 routes_file: str | None = None) -> None:
        self.stack = stack
        self.view = stack.view()
        self.settings = settings or LbSettings()
        self.routes_file = routes_file
        self.listeners: dict[str, RouteListener] = {}
        self.draining: set[RouteListener] = set()
        self.active = 0  # connections across every route (the global limit counts these)
        self.stopping = False
        self.all_closed = asyncio.Event()  # set when `active` drops to 0 while stopping
        self._initial = list(routes)
        self._from_file: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.engine: Engine | None = None  # the epoll engine, when settings.engine says so
        describe(stack.metrics, self.samples)

    @property
    def snapshot(self) -> Snapshot:
        """The latest catalog snapshot the balancer follows."""
        return self.view.snapshot

    async def start(self) -> None:
        """Start the listeners (every route must bind), the checks, and SIGHUP reloading."""
        self.view.subscribe(self._on_snapshot)
        if self.settings.engine == "epoll":
            self.engine = Engine(asyncio.get_running_loop())
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
        return [listener.pool for listener in self.listeners.values()]

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        for listener in self.listeners.values():
            listener.update(snapshot)

    def routes(self) -> list[Route]:
        """The routes in force, by listen address."""
        return [self.listeners[key].route for key in sorted(self.listeners)]

    async def put_route(self, route: Route) -> bool:
        """Add a route (True) or change the one on that address in place (False)."""
        async with self._lock:
            existing = self.listeners.get(route.key)
            if existing is not None:
                existing.reconfigure(route, self.snapshot)
                return False
            self.listeners[route.key] = await self._listen(route)
            return True

    async def _listen(self, route: Route) -> RouteListener:
        """A started listener for a new route, fed the current snapshot (OSError: not bound)."""
        listener = RouteListener(self, route) if self.engine is None else \
            FastListener(self, route, self.engine)
        await listener.start()
        listener.update(self.snapshot)
        return listener

    async def delete_route(self, key: str) -> bool:
        """Stop accepting on a route; its open connections drain (up to the drain timeout)."""
        async with self._lock:
            return self._remove(key)

    def _remove(self, key: str) -> bool:
        listener = self.listeners.pop(key, None)
        if listener is None:
            return False
        self._from_file.discard(key)
        listener.stop_accepting()
        log.info("lb route %s removed; %d connections draining", key,
                 len(listener.connections))
        if listener.connections:
            self.draining.add(listener)
            asyncio.get_running_loop().call_later(
                self.settings.drain_timeout, self._drain_expired, listener)
        return True

    def _drain_expired(self, listener: RouteListener) -> None:
        for connection in list(listener.connections):
            connection.close()

    def listener_drained(self, listener: RouteListener) -> None:
        """A removed route's last connection has ended."""
        self.draining.discard(listener)

    def _on_sighup(self) -> None:
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.create_task(self._reload(), name="lb-reload"))

    async def _reload(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # a bug, not a bad file: say so now, in one line
            log.error("lb: routes file not reloaded, the current routes stay: %s",
                      shown(exc))

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
            changed = [route for route in wanted if route.key in self.listeners
                       and self.listeners[route.key].route != route]
            bound: dict[str, RouteListener] = {}
            for route in wanted:
                if route.key in self.listeners:
                    continue
                try:
                    bound[route.key] = await self._listen(route)
                except Exception as exc:
                    for listener in bound.values():
                        self._close(listener)
                    reason = exc.strerror if isinstance(exc, OSError) else None
                    log.error("lb: routes file not reloaded, the current routes stay: %s: "
                              "cannot listen on %s: %s", route.origin, route.key,
                              reason or shown(exc))
                    return False
            for route in changed:
                self.listeners[route.key].reconfigure(route, self.snapshot)
            self.listeners.update(bound)
            for key in removed:
                self._remove(key)
            self._from_file = keys
        log.info("lb: routes file reloaded from %s: %d added, %d changed, %d removed; %d "
                 "routes running", self.routes_file, len(bound), len(changed), len(removed),
                 len(self.listeners))
        return True

    def _close(self, listener: RouteListener) -> None:
        """Close a listener that never joined the routes, and any client it let in."""
        listener.stop_accepting()
        for connection in list(listener.connections):
            connection.abort()

    async def _sweep_idle(self) -> None:
        idle = self.settings.idle_timeout
        if idle <= 0:
            return
        tick = min(1.0, idle / 10)
        limit = math.ceil(idle / tick)
        while True:
            await asyncio.sleep(tick)
            for listener in [*self.listeners.values(), *self.draining]:
                for connection in list(listener.connections):
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
        self.stopping = True
        listeners = [*self.listeners.values(), *self.draining]
        for listener in listeners:
            listener.stop_accepting()
        if self.active:
            self.all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), self.settings.stop_timeout)
        if self.active:
            log.warning("lb: %d connections still open after %.0fs; closing them", self.active,
                        self.settings.stop_timeout)
        await self._close_all()

    async def _close_all(self) -> None:
        for listener in [*self.listeners.values(), *self.draining]:
            listener.stop_accepting()
            for connection in list(listener.connections):
                connection.abort()
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await asyncio.sleep(0)
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def samples(self) -> Iterable[Sample]:
        """Prometheus samples for every route and instance, read at scrape time."""
        return samples([*self.listeners.values(), *self.draining], self.active)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the catalog view is current (the LB keeps serving the last view)."""
        stale = self.view.stale
        return not stale, {"status": "stale" if stale else "ok", "routes": len(self.listeners),
                           "connections": self.active}
