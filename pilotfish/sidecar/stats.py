"""What the sidecar counts, and how its /metrics series read it at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pilotfish.metrics import Labels, Metrics, Sample

PREFIX = "pilotfish_sidecar_"

SERIES = {
    "containers": ("gauge", "running containers the sidecar sees"),
    "instances": ("gauge", "instances the running containers want registered"),
    "registered": ("gauge", "instances the catalog holds for this sidecar, as far as it knows"),
    "skipped": ("gauge", "container ports not registered, by reason"),
    "events_total": ("counter", "Docker events handled, by action"),
    "reconnects_total": ("counter", "times the Docker event stream was lost and reconnected"),
    "reconciles_total": ("counter", "full reconciles (at start and after every reconnect)"),
    "reconcile_seconds": ("gauge", "how long the last reconcile took"),
    "docker_up": ("gauge", "1 while the sidecar follows Docker and Docker answers"),
    "in_sync": ("gauge", "1 when the catalog holds exactly what the containers want"),
    "registry_errors_total": ("counter", "failed registry calls (retried until in sync)"),
    "lease_age_seconds": ("gauge", "seconds since the sidecar's lease was last renewed"),
    "lease_reregistrations_total": ("counter", "leases found lapsed and replaced"),
    "checks": ("gauge", "health checks the sidecar probes (http, https, tcp, script)"),
    "check_probes_total": ("counter", "health check probes run"),
}


@dataclass
class SidecarStats:
    """Counters the follower bumps; gauges are read from the follower and registrar."""

    events: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    reconciles: int = 0
    reconcile_seconds: float = 0.0
    changes: int = 0


def sample(name: str, value: float, labels: Labels = ()) -> Sample:
    """One series of a sidecar metric."""
    return PREFIX + name, labels, value


def describe(metrics: Metrics, collect: Callable[[], Iterable[Sample]]) -> None:
    """Declare every sidecar series and read them through `collect` at each scrape."""
    for name, (kind, help_text) in SERIES.items():
        metrics.describe(PREFIX + name, kind, help_text)
    metrics.collect(collect)
