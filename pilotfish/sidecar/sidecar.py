"""The sidecar component: a follower of Docker feeding one registrar on one lease."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pilotfish.catalog.interface import Catalog, CatalogError
from pilotfish.catalog.model import Instance
from pilotfish.loop import cancel_and_wait
from pilotfish.mesh.node import MeshNode, wants_mesh
from pilotfish.metrics import Metrics, Sample
from pilotfish.registrar.registrar import Registrar
from pilotfish.sidecar import stats
from pilotfish.sidecar.checker import Checker
from pilotfish.sidecar.containers import Rules
from pilotfish.sidecar.docker import DockerSource
from pilotfish.sidecar.follower import ContainerFollower
from pilotfish.sidecar.journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Everything the sidecar's flags decide."""

    rules: Rules
    docker: str | None = None  # None: DOCKER_HOST, else the default socket
    ttl: int = 10
    keep_on_exit: bool = False


class Sidecar:
    """Registers the containers of one Docker engine on one lease, and withdraws them.

    The lease's owner is `<sidecar id>/<engine id>`; keepalives go out only while the
    follower has Docker's answer within one keepalive interval, so a sidecar that lost sight
    of its containers lets them lapse instead of vouching for them.
    """

    def __init__(self, catalog: Catalog, settings: SidecarSettings,
                 metrics: Metrics | None = None, mesh: MeshNode | None = None) -> None:
        self.catalog = catalog
        self.settings = settings
        self.mesh = mesh  # moves SERVICE_MTLS containers behind the inbound port
        if mesh is not None:
            mesh.on_change = self._update  # a certificate arrived: its instances serve now
        self._unmeshed: set[str] = set()  # instance ids already warned about
        self.stats = stats.SidecarStats()
        self.source = DockerSource(settings.docker)
        self.follower = ContainerFollower(self.source, settings.rules, self._desired,
                                          self.stats, freshness=settings.ttl / 3)
        self.checker = Checker(self._update, self.source.run_script)
        self.journal = Journal()
        self.registrar: Registrar | None = None
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            stats.describe(metrics, self.samples)

    @property
    def owner(self) -> str:
        """Who holds the lease: this sidecar on this engine."""
        return f"{self.settings.rules.sidecar}/{self.follower.engine_id or 'unknown'}"

    async def start(self) -> None:
        """Begin following Docker; the lease is taken once the first reconcile is done."""
        log.info("sidecar %s following Docker at %s (advertising %s, ttl %ds)",
                 self.settings.rules.sidecar, self.source.where,
                 self.settings.rules.advertise_ip, self.settings.ttl)
        await self.follower.start()
        await self.checker.start()
        self._task = asyncio.create_task(self._register(), name="sidecar-register")

    async def _register(self) -> None:
        await self.follower.wait_reconciled(float("inf"))
        prefix = f"{self.settings.rules.sidecar}:"
        await self._seed_checks(prefix)
        self.registrar = Registrar(
            self.catalog, self.settings.ttl, self.owner, self._wanted(),
            vouch=lambda: self.follower.fresh, claims=lambda i: i.id.startswith(prefix))
        await self.registrar.start(require=False)

    async def _seed_checks(self, prefix: str) -> None:
        """A restarted sidecar starts its checks from the verdicts its predecessor stored."""
        self.checker.follow(self.follower.entries())
        try:
            snapshot = await self.catalog.snapshot()
        except CatalogError as exc:
            log.info("sidecar: stored check results not read (%s); checks start from their "
                     "initial status", exc)
            return
        self.checker.seed(i for i in snapshot.instances.values() if i.id.startswith(prefix))

    def _desired(self) -> None:
        """The follower's picture changed: follow its checks, then register the difference."""
        self.checker.follow(self.follower.entries())
        self._update()

    def _update(self) -> None:
        """Hand the registrar what to register now (it writes only what changed)."""
        wanted = self._wanted()
        if self.registrar is not None:
            self.registrar.want(wanted)

    def _wanted(self) -> list[Instance]:
        """The running containers' instances with their checks' latest results, logged."""
        entries = self.follower.entries()
        wanted = self._placed([self.checker.overlay(i) for _, i in entries])
        self.journal.update(wanted, self.follower.departures)
        self.follower.departures.clear()
        return wanted

    def _placed(self, instances: list[Instance]) -> list[Instance]:
        """What to register: the mesh places its instances; without a mesh, a container that
        asked for one is left out (registered in plain TCP it would be open to anyone)."""
        if self.mesh is not None:
            return self.mesh.place(instances)
        placed = [i for i in instances if not wants_mesh(i)]
        for instance in instances:
            if wants_mesh(instance) and instance.id not in self._unmeshed:
                self._unmeshed.add(instance.id)
                log.warning("sidecar: %s asks for the mesh (SERVICE_MTLS) but --mesh-inbound "
                            "is not set; not registered", instance.id)
        return placed

    async def stop(self) -> None:
        """Stop following; withdraw every registration unless --keep-on-exit."""
        await cancel_and_wait(self._task)
        await self.checker.stop()
        await self.follower.stop()
        if self.registrar is not None:
            keep = self.settings.keep_on_exit
            await self.registrar.stop(revoke=not keep)
            log.info("sidecar %s stopped; its registrations %s", self.settings.rules.sidecar,
                     "lapse after the TTL" if keep else "are withdrawn")
        await self.source.close()

    @property
    def in_sync(self) -> bool:
        """Whether the catalog holds exactly what the running containers want."""
        return self.registrar is not None and self.registrar.in_sync

    def health(self) -> tuple[bool, dict[str, Any]]:
        """/health: healthy while Docker is followed and the registrar holds a lease."""
        registrar = self.registrar
        lease_age = registrar.lease_age if registrar is not None else None
        body: dict[str, Any] = {
            "docker": "up" if self.follower.fresh else "down",
            "engine": self.follower.engine_id,
            "containers": len(self.follower.decisions),
            "instances": len(self.follower.instances()),
            "in_sync": self.in_sync,
            "lease": registrar.lease_id if registrar is not None else None,
            "lease_age_seconds": None if lease_age is None else round(lease_age, 3),
            "reconnects": self.stats.reconnects,
        }
        healthy = (self.follower.fresh and registrar is not None
                   and registrar.lease_id is not None
                   and lease_age is not None and lease_age < self.settings.ttl)
        return healthy, body

    def samples(self) -> Iterable[Sample]:
        """The sidecar's series, read at scrape time."""
        registrar = self.registrar
        yield stats.sample("containers", len(self.follower.decisions))
        yield stats.sample("instances", len(self.follower.instances()))
        yield stats.sample("registered", registrar.held if registrar is not None else 0)
        for reason, count in self.follower.skipped():
            yield stats.sample("skipped", count, (("reason", reason),))
        for action, count in self.stats.events.items():
            yield stats.sample("events_total", count, (("action", action),))
        yield stats.sample("reconnects_total", self.stats.reconnects)
        yield stats.sample("checks", self.checker.checks)
        yield stats.sample("check_probes_total", self.checker.probes)
        yield stats.sample("reconciles_total", self.stats.reconciles)
        yield stats.sample("reconcile_seconds", self.stats.reconcile_seconds)
        yield stats.sample("docker_up", 1.0 if self.follower.fresh else 0.0)
        yield stats.sample("in_sync", 1.0 if self.in_sync else 0.0)
        yield stats.sample("registry_errors_total", registrar.errors if registrar else 0)
        age = registrar.lease_age if registrar is not None else None
        yield stats.sample("lease_age_seconds", -1.0 if age is None else age)
        yield stats.sample("lease_reregistrations_total",
                           registrar.reregistrations if registrar else 0)


