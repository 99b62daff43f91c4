"""What the load balancer tells the status UI: each route with its pool, each backend's state
and counters, and the LB's recent warnings and errors (pilotfish.ui.reports.LbReport)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pilotfish.lb.balancer import LoadBalancer
from pilotfish.lb.fleet import FleetBalancer
from pilotfish.lb.pool import Backend
from pilotfish.lb.shared import ALL, backend_key, route_key
from pilotfish.ui.recent import RecentLog
from pilotfish.ui.reports import BackendReport, LbReport, RouteReport


def backend_state(backend: Backend, now: float) -> str:
    """One word for a backend: draining, critical (the catalog's), ejected, down, healthy."""
    if backend.draining:
        return "draining"
    if not backend.serving:
        return "critical"
    if backend.ejected(now):
        return "ejected"
    return "healthy" if backend.healthy else "down"


def _backend(backend: Backend, now: float) -> BackendReport:
    bytes_in, bytes_out = backend.bytes_in, backend.bytes_out
    for connection in list(backend.connections):  # bytes of open connections count too
        moved = connection.moved()
        if moved is not None:
            bytes_in += moved[0]
            bytes_out += moved[1]
    return BackendReport(name=backend.name, id=backend.instance.id,
                         state=backend_state(backend, now), weight=backend.weight,
                         active=backend.active, total=backend.total, failed=backend.failed,
                         bytes_in=bytes_in, bytes_out=bytes_out)


def reporter(balancer: LoadBalancer) -> Callable[[], LbReport]:
    """The function the UI calls for the LB's report (its warnings kept from now on)."""
    recent = RecentLog.attach("pilotfish.lb")

    def report() -> LbReport:
        now = time.monotonic()
        routes: list[RouteReport] = []
        for key in sorted(balancer.gates):
            gate = balancer.gates[key]
            route, stats = gate.route, gate.stats
            routes.append(RouteReport(
                listen=str(gate.address), service=route.service, tag=route.tag,
                balance=route.balance, active=len(gate.connections),
                accepted=stats.accepted, refused=dict(stats.refused), retries=stats.retries,
                panic=gate.pool.panic,
                backends=[_backend(b, now) for b in list(gate.pool.backends.values())]))
        return LbReport(routes=routes, active=balancer.occupancy.active, errors=recent.lines())

    return report


def fleet_reporter(balancer: FleetBalancer) -> Callable[[], LbReport]:
    """The LB's report with workers: the parent's routes and verdicts, every worker's counters
    summed (as of the supervisor's last refresh, at most a second old), open connections from
    the shared counts."""
    recent = RecentLog.attach("pilotfish.lb")

    def report() -> LbReport:
        now = time.monotonic()
        counts: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for name, labels, value in balancer.worker_samples():
            counts[(name, frozenset(labels))] = value
        total = balancer.shared.total

        def count(name: str, **labels: str) -> int:
            return int(counts.get((name, frozenset(labels.items())), 0.0))

        routes: list[RouteReport] = []
        for key in sorted(balancer.gates):
            gate = balancer.gates[key]
            route = gate.route
            refused = {dict(labels)["reason"]: int(value)
                       for (name, labels), value in counts.items()
                       if name == "pilotfish_lb_connections_refused_total"
                       and ("route", key) in labels}
            backends: list[BackendReport] = []
            for backend in list(gate.pool.backends.values()):
                ids = {"instance": backend.name, "id": backend.instance.id, "route": key}
                backends.append(BackendReport(
                    name=backend.name, id=backend.instance.id,
                    state=backend_state(backend, now), weight=backend.weight,
                    active=total(backend_key(key, backend.name)),
                    total=count("pilotfish_lb_instance_connections_total", **ids),
                    failed=count("pilotfish_lb_instance_connections_failed_total", **ids),
                    bytes_in=count("pilotfish_lb_instance_bytes_in_total", **ids),
                    bytes_out=count("pilotfish_lb_instance_bytes_out_total", **ids)))
            routes.append(RouteReport(
                listen=str(gate.address), service=route.service, tag=route.tag,
                balance=route.balance, active=total(route_key(key)),
                accepted=count("pilotfish_lb_connections_total", route=key),
                refused=refused, retries=count("pilotfish_lb_retries_total", route=key),
                panic=count("pilotfish_lb_panic", route=key) > 0, backends=backends))
        return LbReport(routes=routes, active=total(ALL), errors=recent.lines())

    return report
