"""What a component tells the status UI about itself: the shapes of `Stack.reports` values.

Each component registers a function returning one of these (the LB "lb", the sidecar
"sidecar", DNS "dns"); the UI calls it per render, so it must be cheap and never block.
Everything in them that names catalog instances is shown only to readers (ACL `read`).
"""

from __future__ import annotations

from typing import TypedDict


class LogLine(TypedDict):
    """One recent warning or error (recent.RecentLog keeps them)."""

    at: float  # wall clock
    level: str
    message: str


class BackendReport(TypedDict):
    """One instance in a route's pool, as the LB sees it."""

    name: str  # address:port
    id: str
    state: str  # healthy, down (active checks), ejected, draining, critical (catalog)
    weight: int
    active: int
    total: int
    failed: int
    bytes_in: int
    bytes_out: int


class RouteReport(TypedDict):
    """One route: where it listens, what it serves, its counters and its pool."""

    listen: str
    service: str
    tag: str | None
    balance: str
    active: int
    accepted: int
    refused: dict[str, int]
    retries: int
    panic: bool
    backends: list[BackendReport]


class LbReport(TypedDict):
    """The load balancer of this process."""

    routes: list[RouteReport]
    active: int
    errors: list[LogLine]


class ContainerReport(TypedDict):
    """One running container and what became of its ports."""

    id: str
    name: str
    registered: list[str]  # "service id address:port health"
    skipped: list[tuple[str, str]]  # (reason, detail)


class CertificateReport(TypedDict):
    """One certificate the mesh holds on this host."""

    service: str
    expires_in: float  # seconds (negative: expired, unrenewed)
    renew_in: float | None  # seconds until the next renewal is asked for


class IntentionReport(TypedDict):
    """One rule of the intentions in force."""

    source: str
    destination: str
    action: str
    description: str


class MeshReport(TypedDict):
    """The mesh on the sidecar's host: inbound port, certificates, intentions in force."""

    inbound: str
    issuer: str
    certificates: list[CertificateReport]
    waiting: list[str]  # services of this host's containers with no valid certificate
    intentions_version: int  # -1: none read yet (nothing is allowed)
    default: str
    intentions: list[IntentionReport]
    accepted: int
    carried: int
    refused: dict[str, int]
    tunnels: int


class SidecarReport(TypedDict):
    """The Docker sidecar of this process."""

    docker: str  # where it reaches Docker
    connected: bool
    fresh: bool  # Docker answered recently enough to vouch for the containers
    engine: str | None
    last_seen_age: float | None
    reconnects: int
    events: int
    containers: list[ContainerReport]
    lease: str | None
    lease_age: float | None
    ttl: int
    in_sync: bool
    registered: int
    registry_errors: int
    reregistrations: int
    errors: list[LogLine]
    mesh: MeshReport | None  # with --mesh-inbound


class DnsReport(TypedDict):
    """The DNS server of this process: cumulative counters the UI turns into rates."""

    listen: str
    domain: str
    answers: dict[str, int]  # rcode -> responses so far
    names: int
    stale: bool
