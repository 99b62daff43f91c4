"""What the sidecar tells the status UI: Docker, its lease, and each running container with
what became of its ports (pilotfish.ui.reports.SidecarReport)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pilotfish.catalog.model import Instance
from pilotfish.mesh.node import MeshNode
from pilotfish.sidecar.sidecar import Sidecar
from pilotfish.ui.recent import RecentLog
from pilotfish.ui.reports import (
    CertificateReport,
    ContainerReport,
    IntentionReport,
    MeshReport,
    SidecarReport,
)


def _registered(instance: Instance) -> str:
    address = f"[{instance.address}]" if ":" in instance.address else instance.address
    return f"{instance.service} {instance.id} {address}:{instance.port} {instance.overall_health()}"


def reporter(sidecar: Sidecar) -> Callable[[], SidecarReport]:
    """The function the UI calls for the sidecar's report (its warnings kept from now on)."""
    recent = RecentLog.attach("pilotfish.sidecar")

    def report() -> SidecarReport:
        follower = sidecar.follower
        registrar = sidecar.registrar
        containers = [ContainerReport(id=container_id, name=follower.name_of(container_id),
                                      registered=[_registered(i) for i in decision.instances],
                                      skipped=[(s.reason, s.detail) for s in decision.skipped])
                      for container_id, decision in follower.decisions.items()]
        containers.sort(key=lambda c: c["name"])
        seen = follower.last_seen
        return SidecarReport(
            docker=sidecar.source.where, connected=follower.connected, fresh=follower.fresh,
            engine=follower.engine_id,
            last_seen_age=time.monotonic() - seen if seen else None,
            reconnects=sidecar.stats.reconnects, events=sum(sidecar.stats.events.values()),
            containers=containers,
            lease=registrar.lease_id if registrar is not None else None,
            lease_age=registrar.lease_age if registrar is not None else None,
            ttl=sidecar.settings.ttl, in_sync=sidecar.in_sync,
            registered=registrar.held if registrar is not None else 0,
            registry_errors=registrar.errors if registrar is not None else 0,
            reregistrations=registrar.reregistrations if registrar is not None else 0,
            errors=recent.lines(),
            mesh=mesh_report(sidecar.mesh) if sidecar.mesh is not None else None)

    return report


def mesh_report(node: MeshNode) -> MeshReport:
    """The mesh's part of the sidecar page: what it listens on, holds and enforces."""
    now = time.time()
    certificates = [CertificateReport(
        service=service, expires_in=held.expires_at - now,
        renew_in=node.keeper.renew_at[service] - now if service in node.keeper.renew_at
        else None) for service, held in sorted(node.identities.held.items())]
    intentions = node.follower.current
    stats = node.inbound.stats if node.inbound is not None else None
    return MeshReport(
        inbound=str(node.inbound.address if node.inbound is not None else node.settings.inbound),
        issuer=node.issuer.where, certificates=certificates,
        waiting=node.uncertified_services(), intentions_version=intentions.version,
        default=intentions.default,
        intentions=[IntentionReport(source=r.source, destination=r.destination, action=r.action,
                                    description=r.description) for r in intentions.rules],
        accepted=stats.accepted if stats else 0, carried=stats.carried if stats else 0,
        refused=dict(stats.refused) if stats else {},
        tunnels=len(node.pump.tunnels) if node.pump is not None else 0)
