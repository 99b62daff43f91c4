"""The LB's Prometheus series, per route and per instance, read from live counters at scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from pilotfish.lb.gate import RouteGate
from pilotfish.metrics import Labels, Metrics, Sample

INSTANCE_PREFIX = "pilotfish_lb_instance_"
"""Series labelled with an instance's id and address: only catalog readers see them."""

SERIES = {
    "pilotfish_lb_connections_active": ("gauge", "open client connections, per route"),
    "pilotfish_lb_connections_total": ("counter", "client connections accepted, per route"),
    "pilotfish_lb_connections_refused_total": (
        "counter", "clients turned away: limit, no_instance, connect_failed, stopping"),
    "pilotfish_lb_retries_total": ("counter", "connects retried on another instance"),
    "pilotfish_lb_resets_total": ("counter", "connections that ended in an error (a reset), "
                                  "by the side it came from"),
    "pilotfish_lb_panic": ("gauge", "1 while too few instances are healthy and all are used"),
    "pilotfish_lb_instance_connections_active": ("gauge", "open connections per instance"),
    "pilotfish_lb_instance_connections_total": ("counter", "connections made per instance"),
    "pilotfish_lb_instance_connections_failed_total": (
        "counter", "failed connects per instance"),
    "pilotfish_lb_instance_bytes_in_total": ("counter", "bytes from clients to the instance"),
    "pilotfish_lb_instance_bytes_out_total": ("counter", "bytes from the instance to clients"),
    "pilotfish_lb_instance_healthy": ("gauge", "active health check verdict (1 up, 0 down)"),
    "pilotfish_lb_instance_ejected": ("gauge", "1 while passive health keeps it out"),
    "pilotfish_lb_instance_ejections_total": ("counter", "passive ejections"),
    "pilotfish_lb_instance_draining": ("gauge", "1 while it left the catalog and drains"),
    "pilotfish_lb_connections": ("gauge", "open client connections across every route"),
}


def describe(metrics: Metrics, collector: Callable[[], Iterable[Sample]]) -> None:
    """Declare the LB series on the process's metrics registry and hook the collector."""
    for name, (kind, help_text) in SERIES.items():
        metrics.describe(name, kind, help_text, per_instance=name.startswith(INSTANCE_PREFIX))
    metrics.collect(collector)


def samples(gates: Iterable[RouteGate], active: int) -> Iterable[Sample]:
    """Samples for each route and each of its instances."""
    now = time.monotonic()
    out: list[Sample] = [("pilotfish_lb_connections", (), float(active))]
    for gate in gates:
        route: Labels = (("route", gate.route.key),)
        stats = gate.stats
        out += [
            ("pilotfish_lb_connections_active", route, float(len(gate.connections))),
            ("pilotfish_lb_connections_total", route, float(stats.accepted)),
            ("pilotfish_lb_retries_total", route, float(stats.retries)),
            ("pilotfish_lb_panic", route, float(gate.pool.panic)),
            ("pilotfish_lb_resets_total", (("by", "client"), *route), float(stats.resets[0])),
            ("pilotfish_lb_resets_total", (("by", "backend"), *route), float(stats.resets[1])),
        ]
        out += [("pilotfish_lb_connections_refused_total", (("reason", reason), *route),
                 float(count)) for reason, count in stats.refused.items()]
        for backend in list(gate.pool.backends.values()):
            bytes_in, bytes_out = backend.bytes_in, backend.bytes_out
            for connection in list(backend.connections):
                moved = connection.moved()
                if moved is not None:
                    bytes_in += moved[0]
                    bytes_out += moved[1]
            labels: Labels = (("instance", backend.name), ("id", backend.instance.id), *route)
            labels = tuple(sorted(labels))
            out += [
                ("pilotfish_lb_instance_connections_active", labels, float(backend.active)),
                ("pilotfish_lb_instance_connections_total", labels, float(backend.total)),
                ("pilotfish_lb_instance_connections_failed_total", labels,
                 float(backend.failed)),
                ("pilotfish_lb_instance_bytes_in_total", labels, float(bytes_in)),
                ("pilotfish_lb_instance_bytes_out_total", labels, float(bytes_out)),
                ("pilotfish_lb_instance_healthy", labels, float(backend.healthy)),
                ("pilotfish_lb_instance_ejected", labels, float(backend.ejected(now))),
                ("pilotfish_lb_instance_ejections_total", labels, float(backend.ejections)),
                ("pilotfish_lb_instance_draining", labels, float(backend.draining)),
            ]
    return out
