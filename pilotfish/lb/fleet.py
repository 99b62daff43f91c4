"""The LB with `--workers N`: the parent keeps the routes, the checks and the ports; the
workers carry the connections (pilotfish.lb.worker).

The parent's balancer is the same LoadBalancer as without workers, on the process's one view,
with an engine that only holds each route's port (pilotfish.lb.reserve): the routes API, the
flags, the routes file and SIGHUP work on it unchanged, and every change of the routes in
force ships the whole table to every worker. Its pools follow the view as before, so the
active health checks run once, here, on them; a verdict that flips ships the routes' down
sets to every worker. A worker's passive ejection comes here and goes to every worker. What
/metrics and the status UI show is summed: counters from every worker's samples (the
supervisor's), open connections from the shared counts (pilotfish.lb.shared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from pilotfish.lb.balancer import LoadBalancer
from pilotfish.lb.pool import Key, Pool
from pilotfish.lb.reserve import ReserveEngine
from pilotfish.lb.routes import Route
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import ALL, SharedCounts, backend_key, route_key
from pilotfish.lb.worker import Ejection, WorkerConfig
from pilotfish.loop import cancel_and_wait
from pilotfish.metrics import Sample
from pilotfish.stack import Stack
from pilotfish.workers.part import WorkerSpec
from pilotfish.workers.supervisor import Supervisor

log = logging.getLogger(__name__)

PART = "lb"
RESYNC_EVERY = 1.0  # seconds: routes and verdicts are sent again (a worker that restarted
# while they changed has them within this)
POLL = 0.02  # seconds between two looks at whether every worker runs
SHIP_TIMEOUT = 2.0  # seconds the routes API waits for the workers to apply a change


class FleetBalancer(LoadBalancer):
    """The parent's LoadBalancer with workers (see the module's docstring)."""

    def __init__(self, stack: Stack, routes: Iterable[Route], settings: LbSettings,
                 supervisor: Supervisor, routes_file: str | None = None) -> None:
        super().__init__(stack, routes, settings, routes_file, engine=ReserveEngine)
        self.supervisor = supervisor
        self.shared = SharedCounts.create(supervisor.count)
        self._down: dict[str, list[Key]] = {}
        self._resync: asyncio.Task[None] | None = None
        supervisor.add(WorkerSpec(PART, "pilotfish.lb.worker:build", self.worker_config,
                                  on_report=self._reported))

    def worker_config(self) -> WorkerConfig:
        """What a (re)starting worker starts from: today's routes, verdicts and ejections."""
        return WorkerConfig(tuple(self.routes()), self.settings, self.shared.path,
                            dict(self._down), tuple(self._ejections()))

    async def start(self) -> None:
        """Hold every route's port, then check and keep the workers in step."""
        await super().start()
        self._resync = asyncio.create_task(self._resync_often(), name="lb-resync")

    async def stop(self) -> None:
        """The workers have drained (the supervisor stops first): let the ports go."""
        await cancel_and_wait(self._resync)
        await super().stop()
        self.shared.close()
        self.shared.unlink()

    async def put_route(self, route: Route) -> bool:
        """Add or change a route; answered once every running worker serves it."""
        created = await super().put_route(route)
        await self._ship_routes()
        return created

    async def delete_route(self, key: str) -> bool:
        """Remove a route; answered once no worker accepts on it (open connections drain)."""
        removed = await super().delete_route(key)
        if removed:
            await self._ship_routes()
        return removed

    async def _in_force(self) -> None:
        """A routes file reloaded (SIGHUP) serves once every worker applied it: only then is
        it logged as reloaded."""
        await self._ship_routes()

    async def _ship_routes(self) -> None:
        """Every worker applies the routes in force. One that is starting may have begun from
        the routes before this change: wait for it (up to SHIP_TIMEOUT) and ship again; one
        that does not answer gets them at the next resync."""
        deadline = time.monotonic() + SHIP_TIMEOUT
        slots = self.supervisor.slots
        while True:
            await self.supervisor.call(PART, "lb.routes", tuple(self.routes()), SHIP_TIMEOUT)
            if all(slot.live for slot in slots) or time.monotonic() > deadline:
                return
            await self._until_live(deadline)

    async def _until_live(self, deadline: float) -> None:
        """Wait until every worker runs, or the deadline (a restart's backoff may be longer)."""
        slots = self.supervisor.slots
        for _ in range(max(0, int((deadline - time.monotonic()) / POLL))):
            if all(slot.live for slot in slots):
                return
            await asyncio.sleep(POLL)  # the supervisor has no event for it: a short poll

    async def _resync_often(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_EVERY)
            self.supervisor.tell(PART, "lb.routes", tuple(self.routes()))
            self.supervisor.tell(PART, "lb.health", dict(self._down))

    def _pools(self) -> list[Pool]:
        """The pools the checks go over; a verdict that flipped since the last call is
        shipped (the checks ask for the pools again right after a flip)."""
        pools = super()._pools()
        down = {key: sorted(b.key for b in gate.pool.backends.values() if not b.healthy)
                for key, gate in self.gates.items()}
        down = {key: keys for key, keys in down.items() if keys}
        if down != self._down:
            self._down = down
            self.supervisor.tell(PART, "lb.health", dict(down))
        return pools

    def _ejections(self) -> list[Ejection]:
        now = time.monotonic()  # the machine's clock: every worker reads the same
        return [(key, b.key, b.ejected_until, b.eject_backoff)
                for key, gate in self.gates.items() for b in gate.pool.backends.values()
                if b.ejected_until > now]

    def _reported(self, worker: int, kind: str, body: Any) -> None:
        if kind != "ejected":
            return
        route, key, until, backoff = body
        gate = self.gates.get(route)
        if gate is not None:
            gate.pool.eject((key[0], key[1]), until, backoff)
        self.supervisor.tell(PART, "lb.eject", (route, key, until, backoff))

    def worker_samples(self) -> list[Sample]:
        """The workers' series summed, as of the supervisor's last refresh."""
        return self.supervisor.samples(PART)

    def samples(self) -> Iterable[Sample]:
        """The LB's series for the one /metrics: the workers' counters summed, and the open
        connections of every worker, read from the shared counts."""
        summed = self.worker_samples()  # without the active counts (LbWorker.samples)
        total = self.shared.total
        out: list[Sample] = [("pilotfish_lb_connections", (), float(total(ALL)))]
        for name, labels, _ in summed:
            if name == "pilotfish_lb_connections_total":
                route = dict(labels)["route"]
                out.append(("pilotfish_lb_connections_active", labels,
                            float(total(route_key(route)))))
            elif name == "pilotfish_lb_instance_connections_total":
                fields = dict(labels)
                out.append(("pilotfish_lb_instance_connections_active", labels,
                            float(total(backend_key(fields["route"], fields["instance"])))))
        return summed + out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the view is current; open connections summed over the workers."""
        healthy, body = super().health()
        with contextlib.suppress(ValueError):  # the file is closed at stop
            body["connections"] = self.shared.total(ALL)
        body["workers"] = self.supervisor.count
        return healthy, body
