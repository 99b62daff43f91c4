"""A worker part for tests: it counts what reaches it, so a test sees each worker's messages."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pilotfish.metrics import Sample
from pilotfish.workers.part import WorkerContext


class ProbePart:
    """Counts SIGHUPs and reports the replica view's index and its worker number."""

    def __init__(self, config: Any, context: WorkerContext) -> None:
        self.context = context
        self.sighups = 0
        self.stopped = False

    async def start(self) -> None:
        """Nothing to bind."""

    async def stop(self) -> None:
        """Nothing to drain."""
        self.stopped = True

    def samples(self) -> Iterable[Sample]:
        """One counter (summed by the parent) and one gauge (the largest kept)."""
        yield "probe_sighups_total", (), float(self.sighups)
        yield "probe_index", (), float(self.context.view.snapshot.index)

    def message(self, kind: str, body: Any) -> Any:
        """Count SIGHUPs; answer "whoami" with (worker, view index, instance ids); "report"
        sends `body` back to the parent; "warn" logs each line of `body` as a warning."""
        if kind == "sighup":
            self.sighups += 1
        elif kind == "whoami":
            view = self.context.view
            return self.context.index, view.snapshot.index, sorted(view.snapshot.instances)
        elif kind == "report":
            self.context.report("echo", body)
        elif kind == "warn":
            for line in body:
                logging.getLogger("pilotfish.probe").warning("%s", line)
        return None


def build(config: Any, context: WorkerContext) -> ProbePart:
    """The factory: "tests.workers.probe:build"."""
    return ProbePart(config, context)
