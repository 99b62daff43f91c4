"""The LB as it runs in one worker process (`--workers N`): the engines carry the clients of
every route, on the replica of the parent's view; the parent decides everything else.

The parent (pilotfish.lb.fleet) owns the routes (flags, routes file, routes API, SIGHUP) and
ships the whole table on every change; it runs the active health checks once and ships the
verdicts; a passive ejection made here is reported to it and shipped to every worker. The
connection counts live in shared memory (pilotfish.lb.shared), so the pickers and the limits
here see every worker's connections. Built in the worker by `build` (the spec's factory,
"pilotfish.lb.worker:build").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pilotfish.lb.balancer import LoadBalancer, View
from pilotfish.lb.pool import Backend, Key
from pilotfish.lb.routes import Route, shown
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import SharedCounts
from pilotfish.metrics import Metrics, Sample

log = logging.getLogger(__name__)

SUMMED_FROM_SHARED = frozenset({"pilotfish_lb_connections", "pilotfish_lb_connections_active",
                                "pilotfish_lb_instance_connections_active"})
"""Gauges the parent reads from the shared counts (a sum), not from the workers' samples."""

Ejection = tuple[str, Key, float, float]
"""(route key, backend key, until on the machine's monotonic clock, backoff)."""


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker starts from (asked afresh at each start: a restarted worker gets today's
    routes, verdicts and ejections)."""

    routes: tuple[Route, ...]
    settings: LbSettings
    counts: str  # the shared counts file
    down: dict[str, list[Key]] = field(default_factory=dict)  # per route: checks say down
    ejections: tuple[Ejection, ...] = ()


class Context(Protocol):
    """What the worker hands the factory (pilotfish.workers.part.WorkerContext)."""

    index: int
    view: Any
    report: Callable[[str, Any], None]


class _Host:
    """The balancer's process, as a worker has it: the replica view and its own metrics."""

    def __init__(self, view: View) -> None:
        self.metrics = Metrics()
        self._view = view

    def view(self) -> View:
        return self._view

    def on_sighup(self, callback: Callable[[], object]) -> None:
        """SIGHUP reaches the parent, which ships the routes it re-read."""


class LbWorker:
    """The LB part of one worker: a LoadBalancer whose routes, verdicts and ejections come
    from the parent."""

    def __init__(self, config: WorkerConfig, context: Context) -> None:
        self.context = context
        self.counts = SharedCounts.attach(config.counts, context.index)
        settings = replace(config.settings, reuse_port=True, check_interval=0.0)
        self.balancer = LoadBalancer(_Host(context.view), config.routes, settings,
                                     counts=self.counts)
        self._config = config

    async def start(self) -> None:
        """Bind every route with SO_REUSEPORT and serve; apply the parent's verdicts."""
        await self.balancer.start()
        for gate in self.balancer.gates.values():
            gate.pool.on_ejected = self._reporter(gate.route.key)
        self._set_health(self._config.down)
        for ejection in self._config.ejections:
            self._eject(ejection)

    async def stop(self) -> None:
        """Drain: accept no more, let connections finish (up to --lb-stop-timeout)."""
        await self.balancer.stop()
        self.counts.close()

    def samples(self) -> Iterable[Sample]:
        """This worker's counters; the parent sums them (active counts: from shared memory)."""
        return [s for s in self.balancer.samples() if s[0] not in SUMMED_FROM_SHARED]

    async def message(self, kind: str, body: Any) -> Any:
        """The parent's news: the routes in force, health verdicts, an ejection."""
        if kind == "lb.routes":
            await self._apply_routes(body)
        elif kind == "lb.health":
            self._set_health(body)
        elif kind == "lb.eject":
            self._eject(body)
        return None

    def _reporter(self, route: str) -> Callable[[Backend], None]:
        def report(backend: Backend) -> None:
            self.context.report("ejected", (route, backend.key, backend.ejected_until,
                                            backend.eject_backoff))
        return report

    async def _apply_routes(self, routes: Iterable[Route]) -> None:
        balancer = self.balancer
        wanted = {route.key: route for route in routes}
        for key in [key for key in balancer.gates if key not in wanted]:
            await balancer.delete_route(key)
        for route in wanted.values():
            gate = balancer.gates.get(route.key)
            if gate is not None and gate.route == route:
                continue
            try:
                await balancer.put_route(route)
            except OSError as exc:  # the parent bound it: another program took it meanwhile
                log.error("lb worker %d: cannot listen on %s: %s", self.context.index,
                          route.key, exc.strerror or shown(exc))
                continue
            balancer.gates[route.key].pool.on_ejected = self._reporter(route.key)

    def _set_health(self, down: dict[str, list[Key]]) -> None:
        for key, gate in self.balancer.gates.items():
            gate.pool.set_health({(k[0], k[1]) for k in down.get(key, ())})

    def _eject(self, ejection: Ejection) -> None:
        route, key, until, backoff = ejection
        gate = self.balancer.gates.get(route)
        if gate is not None:
            gate.pool.eject((key[0], key[1]), until, backoff)


def build(config: WorkerConfig, context: Context) -> LbWorker:
    """The worker part's factory ("pilotfish.lb.worker:build")."""
    return LbWorker(config, context)
