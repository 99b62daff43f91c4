"""What a component gives the supervisor to run in workers, and what it runs there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pilotfish.metrics import Labels, Sample
from pilotfish.workers.replica import ReplicaView


class WorkerPart(Protocol):
    """A component as it runs in one worker (built there by its spec's factory)."""

    async def start(self) -> None:
        """Serve: bind the listening ports with SO_REUSEPORT."""

    async def stop(self) -> None:
        """Stop serving, letting what is in flight finish (the grace is the supervisor's)."""

    def samples(self) -> Iterable[Sample]:
        """Its counters and gauges now; the parent sums them over the workers."""

    def message(self, kind: str, body: Any) -> Any | Awaitable[Any]:
        """What the parent sends it (`Supervisor.tell`/`call`; "sighup" after a reload)."""


@dataclass
class WorkerContext:
    """What a worker hands each part's factory."""

    index: int  # this worker's number, 0 .. count-1 (a restarted worker keeps its number)
    count: int
    view: ReplicaView
    report: Callable[[str, Any], None]  # (kind, body) to the spec's on_report in the parent


Factory = Callable[[Any, WorkerContext], WorkerPart]
"""Builds a part in a worker from its spec's config: named "package.module:function"."""


@dataclass
class WorkerSpec:
    """A component that serves in workers instead of in the parent."""

    name: str  # "dns", "lb": the key of its messages, samples and reports
    factory: str  # "pilotfish.dns.worker:build": imported in the worker
    config: Callable[[], Any]  # picklable; asked afresh at every (re)start of a worker
    on_report: Callable[[int, str, Any], None] | None = None  # (worker, kind, body)
    on_ready: Callable[[], None] | None = None  # once every worker has started the part


def sum_samples(per_worker: Iterable[Iterable[Sample]]) -> list[Sample]:
    """One set of series from every worker's: counters (`*_total`) add up, gauges take the
    largest (each worker holds the same zone, the same routes)."""
    totals: dict[tuple[str, Labels], float] = {}
    for samples in per_worker:
        for name, labels, value in samples:
            key = (name, labels)
            if name.endswith("_total"):
                totals[key] = totals.get(key, 0.0) + value
            else:
                totals[key] = max(totals.get(key, value), value)
    return [(name, labels, value) for (name, labels), value in totals.items()]
