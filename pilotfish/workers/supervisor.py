"""The parent's side of the workers: start N, ship them the view, sum their counters."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pilotfish.catalog.view import CatalogView
from pilotfish.loop import cancel_and_wait
from pilotfish.metrics import Metrics, Sample
from pilotfish.workers.channel import ChannelClosed
from pilotfish.workers.part import WorkerSpec, sum_samples
from pilotfish.workers.process import WorkerSlot
from pilotfish.workers.shipping import ViewShipper

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT = 0.5  # seconds a worker has to send its counters for a /metrics scrape
REPORT_EVERY = 1.0  # seconds between two refreshes of the counters the status UI shows
DRAIN_GRACE = 10.0  # seconds the workers have to finish what is in flight at stop


class Supervisor:
    """N worker processes serving the parts components handed it; a `pilotfish` component.

    Components `add` a WorkerSpec while the process is built; the supervisor starts last
    (after the view and every component's parent side), so its SIGHUP forwarder runs after
    every other SIGHUP callback, and stops first (workers drain before the view stops).
    """

    def __init__(self, view: CatalogView, count: int, metrics: Metrics,
                 grace: float = DRAIN_GRACE) -> None:
        self.view = view
        self.count = count
        self.metrics = metrics
        self.grace = grace
        self.specs: dict[str, WorkerSpec] = {}
        self.shipper = ViewShipper(view)
        self.slots: list[WorkerSlot] = []
        self.argv: tuple[str, ...] = ()
        self._reporter: asyncio.Task[None] | None = None

    def add(self, spec: WorkerSpec) -> None:
        """Run `spec`'s part in every worker (before `start`)."""
        self.specs[spec.name] = spec

    async def start(self) -> None:
        """Start every worker and wait until each serves; then tell the specs (on_ready)."""
        if not self.specs:
            return
        self.argv = _worker_argv()
        self.shipper.start()
        self.slots = [WorkerSlot(index, self.shipper, self._start_body, self._reported,
                                 self.argv) for index in range(self.count)]
        for slot in self.slots:
            slot.run()
        try:
            await asyncio.gather(*(slot.started for slot in self.slots))
        except BaseException:
            await self.stop()
            raise
        self.metrics.before_scrape(self.refresh)
        self.metrics.describe("pilotfish_workers", "gauge", "Worker processes serving now.")
        self.metrics.describe("pilotfish_worker_restarts_total", "counter",
                              "Worker processes restarted after they died.")
        self.metrics.collect(self._own_samples)
        self._reporter = asyncio.create_task(self._refresh_often(), name="worker-counters")
        for spec in self.specs.values():
            if spec.on_ready is not None:
                spec.on_ready()
        log.info("%d workers serving %s", self.count, ", ".join(self.specs))

    async def stop(self) -> None:
        """Have every worker drain within the grace; terminate the ones that do not."""
        await cancel_and_wait(self._reporter)
        self._reporter = None
        await asyncio.gather(*(slot.stop(self.grace) for slot in self.slots))

    def _start_body(self, index: int) -> dict[str, Any]:
        return {"index": index, "count": self.count,
                "parts": [(spec.name, spec.factory, spec.config())
                          for spec in self.specs.values()]}

    def _reported(self, worker: int, part: str, kind: str, body: Any) -> None:
        spec = self.specs.get(part)
        if spec is not None and spec.on_report is not None:
            spec.on_report(worker, kind, body)

    def tell(self, part: str, kind: str, body: Any = None) -> None:
        """Send every running worker's `part` a message (a route added, a health verdict)."""
        for slot in self.slots:
            slot.tell("part", (part, kind, body))

    async def call(self, part: str, kind: str, body: Any = None,
                   timeout: float = 5.0) -> list[Any]:
        """Ask every running worker's `part`; their answers, one per worker that answered."""
        answers = await asyncio.gather(
            *(slot.call("part", (part, kind, body), timeout) for slot in self.slots
              if slot.live), return_exceptions=True)
        return [answer for answer in answers
                if not isinstance(answer, (TimeoutError, ChannelClosed, RuntimeError))]

    def sighup(self) -> None:
        """Forward SIGHUP to every worker (the parent has reloaded its own files already)."""
        for slot in self.slots:
            slot.tell("sighup", None)

    async def refresh(self, timeout: float = SCRAPE_TIMEOUT) -> None:
        """Have every worker's counters as they are now (what a /metrics scrape does first)."""
        await asyncio.gather(*(slot.refresh(timeout) for slot in self.slots))

    async def _refresh_often(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY)
            await self.refresh()

    def samples(self, part: str) -> list[Sample]:
        """A part's series summed over the workers, as of the last refresh."""
        return sum_samples(slot.samples(part) for slot in self.slots)

    def per_worker(self, part: str) -> list[list[Sample]]:
        """A part's series in each worker, as of the last refresh (tests, the benchmark)."""
        return [slot.samples(part) for slot in self.slots]

    @property
    def pids(self) -> list[int | None]:
        """Each worker's process id (None while one restarts)."""
        return [slot.pid for slot in self.slots]

    def _own_samples(self) -> list[Sample]:
        return [("pilotfish_workers", (), float(sum(slot.live for slot in self.slots))),
                ("pilotfish_worker_restarts_total", (),
                 float(sum(slot.restarts for slot in self.slots)))]


def _worker_argv() -> tuple[str, ...]:
    """The worker's flags: the parent's log level and event loop."""
    loop = asyncio.get_running_loop()
    argv = ["--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())]
    if not type(loop).__module__.startswith("uvloop"):
        argv.append("--no-uvloop")
    return tuple(argv)
