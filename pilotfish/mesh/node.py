"""The mesh on one host, as the sidecar runs it: the inbound port, the outbound routes, the
certificates of the services on this host and of those it speaks as, and the intentions.

The sidecar hands it the instances its containers want (`place`): one whose container asks
for the mesh (SERVICE_MTLS) is registered at the inbound port, with meta mtls=1, and its
container becomes one of the inbound port's local targets; the others pass unchanged. Until
this host holds a valid certificate for its service, such an instance carries a critical
`mesh` check, so DNS and the LB do not hand out a port whose handshakes would fail.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from pilotfish.catalog.checks import with_check
from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Check, Instance
from pilotfish.config import HostPort
from pilotfish.mesh.identities import Identities
from pilotfish.mesh.inbound import Inbound
from pilotfish.mesh.issuer import IssuerClient
from pilotfish.mesh.keeper import CertificateKeeper
from pilotfish.mesh.outbound import MESH_META, OutboundRoutes, Upstream
from pilotfish.mesh.policy import IntentionsFollower
from pilotfish.mesh.pump import Pump
from pilotfish.metrics import Sample
from pilotfish.stack import Stack

log = logging.getLogger(__name__)

TRUTHY_OFF = ("", "0", "false", "no")
MESH_CHECK = "mesh"
PREFIX = "pilotfish_mesh_"
SERIES = {
    "certificates": ("gauge", "services this host holds a certificate for"),
    "certificates_missing": ("gauge", "services this host serves or speaks as with no valid "
                                      "certificate (their instances are not served)"),
    "certificates_issued_total": ("counter", "certificates obtained from the CA (renewals too)"),
    "certificate_failures_total": ("counter", "failed certificate requests (retried)"),
    "inbound_accepted_total": ("counter", "connections accepted on the inbound port"),
    "inbound_carried_total": ("counter", "inbound connections carried to a local container"),
    "inbound_refused_total": ("counter", "inbound connections refused, by reason"),
    "handshake_failures_total": ("counter", "TLS handshakes that failed or timed out"),
    "tunnels": ("gauge", "connections open through the mesh on this host"),
    "resumed_total": ("counter", "outbound handshakes that resumed a TLS session"),
    "server_identity_failures_total": ("counter", "outbound servers that were not the "
                                                  "expected service"),
    "intentions_version": ("gauge", "version of the intentions in force (-1: none read yet)"),
}


def uncertified(instance: Instance, since: float) -> Instance:
    """The instance with a critical `mesh` check: no certificate for its service (since)."""
    check = Check(id=MESH_CHECK, name="mesh certificate", kind="sidecar", status="critical",
                  output=f"no certificate for {instance.service} yet: its inbound port "
                         "cannot complete a handshake", changed=since)
    return with_check(instance, check)


def wants_mesh(instance: Instance) -> bool:
    """Whether the instance's container asked for the mesh (SERVICE_MTLS set, not off)."""
    value = instance.meta.get(MESH_META)
    return value is not None and value.strip().lower() not in TRUTHY_OFF


@dataclass(frozen=True)
class MeshSettings:
    """What the mesh flags decide."""

    inbound: HostPort
    advertise_ip: str
    issuer: str
    token: str | None
    domain: str
    cert_ttl: int | None = None
    upstreams: tuple[Upstream, ...] = ()
    close_denied: bool = False
    issuer_verify: ssl.SSLContext | bool = True  # a context for an https:// CA


class MeshNode:
    """The mesh's component on one host (started before the sidecar that feeds it)."""

    def __init__(self, stack: Stack, settings: MeshSettings) -> None:
        self.settings = settings
        self.view = stack.view()
        self.identities = Identities(settings.domain)
        self.follower = IntentionsFollower(stack.catalog)
        self.issuer = IssuerClient(settings.issuer, settings.token, settings.issuer_verify)
        self.keeper = CertificateKeeper(self.identities, self.issuer, settings.cert_ttl)
        self.keeper.on_changed = self._certificate_changed
        self.on_change: Callable[[], None] | None = None  # place() would now answer otherwise
        self._waiting: dict[str, float] = {}  # service -> since when it has no certificate
        self.targets: dict[str, list[tuple[str, int]]] = {}
        self.pump: Pump | None = None
        self.inbound: Inbound | None = None
        self.outbound: OutboundRoutes | None = None
        self._sources = {upstream.source for upstream in settings.upstreams}
        self._local: set[str] = set()
        for name, (kind, help_text) in SERIES.items():
            stack.metrics.describe(PREFIX + name, kind, help_text)
        stack.metrics.collect(self.samples)

    @property
    def inbound_port(self) -> int:
        """The port instances in the mesh are registered at."""
        assert self.inbound is not None
        return self.inbound.address.port

    async def start(self) -> None:
        """Bind the inbound port and the upstreams, read the intentions, ask for certificates."""
        self.pump = Pump(asyncio.get_running_loop())
        self.inbound = Inbound(self.pump, self.settings.inbound, self.identities,
                               self.follower.allows, self._targets_of,
                               self.settings.close_denied)
        self.inbound.start()
        self.follower.subscribe(self.inbound.intentions_changed)
        await self.follower.start()
        self.keeper.want(self._sources | self._local)
        self.outbound = OutboundRoutes(self.pump, self.identities, list(self.settings.upstreams))
        await self.outbound.start(self.view.snapshot)
        self.view.subscribe(self._on_snapshot)

    async def stop(self) -> None:
        """Stop accepting, renewing and following; close what is open."""
        if self.outbound is not None:
            self.outbound.stop()
        if self.inbound is not None:
            self.inbound.stop()
        await self.follower.stop()
        await self.keeper.stop()
        await self.issuer.close()
        if self.pump is not None:
            self.pump.close_all()

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        if self.outbound is not None:
            self.outbound.update(snapshot)

    def _targets_of(self, service: str) -> list[tuple[str, int]]:
        return self.targets.get(service, [])

    def place(self, instances: Iterable[Instance]) -> list[Instance]:
        """The instances to register: those in the mesh moved behind the inbound port."""
        placed: list[Instance] = []
        targets: dict[str, list[tuple[str, int]]] = {}
        waiting: dict[str, float] = {}
        port = self.inbound_port
        for instance in instances:
            if not wants_mesh(instance):
                placed.append(instance)
                continue
            # The container is reached over this host's own network: at loopback when it
            # was registered at the host's address (host network, published ports).
            local = "127.0.0.1" if instance.address == self.settings.advertise_ip \
                else instance.address
            targets.setdefault(instance.service, []).append((local, instance.port))
            moved = replace(instance, address=self.settings.advertise_ip, port=port,
                            meta={**instance.meta, MESH_META: "1"})
            if self.certified(instance.service):
                placed.append(moved)
            else:
                since = waiting.setdefault(instance.service, self._waiting.get(
                    instance.service, time.time()))
                placed.append(uncertified(moved, since))
        self._waiting = waiting
        self.targets = targets
        local_services = set(targets)
        if local_services != self._local:
            self._local = local_services
            self.keeper.want(self._sources | self._local)
        return placed

    def certified(self, service: str) -> bool:
        """Whether this host holds a certificate for `service` that has not expired."""
        held = self.identities.held.get(service)
        return held is not None and held.expires_at > time.time()

    def uncertified_services(self) -> list[str]:
        """The services this host serves or speaks as that have no valid certificate now."""
        return sorted(s for s in self._sources | self._local if not self.certified(s))

    def _certificate_changed(self, service: str) -> None:
        if service in self._local and self.on_change is not None:
            self.on_change()

    def samples(self) -> Iterable[Sample]:
        """The mesh's series, read at scrape time."""
        def sample(name: str, value: float, labels: tuple[tuple[str, str], ...] = ()) -> Sample:
            """One series."""
            return PREFIX + name, labels, value

        yield sample("certificates", len(self.identities.held))
        yield sample("certificates_missing", len(self.uncertified_services()))
        yield sample("certificates_issued_total", self.keeper.issued)
        yield sample("certificate_failures_total", self.keeper.failures)
        yield sample("intentions_version", self.follower.current.version)
        if self.pump is not None:
            yield sample("handshake_failures_total", self.pump.handshake_failures)
            yield sample("tunnels", len(self.pump.tunnels))
        if self.inbound is not None:
            stats = self.inbound.stats
            yield sample("inbound_accepted_total", stats.accepted)
            yield sample("inbound_carried_total", stats.carried)
            for reason, count in stats.refused.items():
                yield sample("inbound_refused_total", count, (("reason", reason),))
        if self.outbound is not None:
            listeners = [g.listener for g in self.outbound.gates]
            yield sample("resumed_total", sum(getattr(x, "resumed", 0) for x in listeners))
            yield sample("server_identity_failures_total",
                         sum(getattr(x, "verify_failures", 0) for x in listeners))

