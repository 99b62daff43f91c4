"""Runs every probed check of every running container from one timer, and keeps their results.

One task holds a heap of due times; each due check gets one probe (a short task, at most
CONCURRENCY at a time; a check whose last probe is still running is not probed again). The
first probe of a check comes after a random part of its interval (at most FIRST_PROBE), so a
sidecar starting among 200 containers does not probe them all at once, and a new container
is judged at once. Results change the registered instance only when a status changes (or,
for the same status, when the output changed and the last output written is OUTPUT_EVERY
old): the owner is called once per burst of changes and registers the difference.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from pilotfish.catalog.model import Check, Health, Instance
from pilotfish.loop import cancel_and_wait, wait_event
from pilotfish.sidecar.probes import Result, ScriptRunner, probe

log = logging.getLogger(__name__)

PROBED = frozenset({"http", "https", "tcp", "script"})
CONCURRENCY = 64
FIRST_PROBE = 0.2  # seconds: the latest a new check's first probe starts
OUTPUT_EVERY = 30.0  # seconds between writes of a changed output when the status stays
SLACK = 0.005  # checks due this close together start on one wake-up of the timer


@dataclass(eq=False, slots=True)
class _Job:
    container_id: str
    check: Check
    status: Health
    output: str
    changed: float  # wall clock of the last status change
    output_at: float = 0.0  # monotonic time the output last changed what is registered
    due: float = 0.0
    running: bool = False
    live: bool = True


class Checker:
    """The probed checks of every running container: scheduled, run, and their verdicts."""

    def __init__(self, changed: Callable[[], None], script: ScriptRunner | None = None,
                 concurrency: int = CONCURRENCY) -> None:
        self._changed = changed
        self._script = script
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._slots = concurrency
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._notify: asyncio.Handle | None = None
        self._overlaid: dict[str, tuple[Instance, tuple[object, ...], Instance]] = {}
        self.probes = 0  # probes finished, for /metrics and the benchmark

    @property
    def checks(self) -> int:
        """How many probed checks are scheduled."""
        return len(self._jobs)

    def follow(self, entries: Iterable[tuple[str, Instance]]) -> None:
        """Schedule the probed checks of these (container id, instance) pairs, and only those:
        a new or redefined check starts over from its initial status."""
        seen: set[tuple[str, str]] = set()
        now = time.monotonic()
        for container_id, instance in entries:
            for check in instance.checks:
                if check.kind not in PROBED:
                    continue
                key = (instance.id, check.id)
                seen.add(key)
                job = self._jobs.get(key)
                if job is not None and job.check == check and job.container_id == container_id:
                    continue
                if job is not None:
                    job.live = False
                job = _Job(container_id, check, check.status, check.output, time.time())
                self._jobs[key] = job
                self._schedule(job, now + random.uniform(0, min(check.interval, FIRST_PROBE)))
        for key in [k for k in self._jobs if k not in seen]:
            self._jobs.pop(key).live = False
        ids = {instance_id for instance_id, _ in seen}
        for instance_id in [i for i in self._overlaid if i not in ids]:
            del self._overlaid[instance_id]

    def seed(self, stored: Iterable[Instance]) -> None:
        """Start followed checks from the verdicts stored in the catalog (a restarted
        sidecar's instances), where the check is the same: re-registering them does not make
        them critical until their first probe."""
        for instance in stored:
            for check in instance.checks:
                job = self._jobs.get((instance.id, check.id))
                if job is not None and _same(job.check, check):
                    job.status, job.output, job.changed = check.status, check.output, \
                        check.changed
    def overlay(self, instance: Instance) -> Instance:
        """The instance with its probed checks as they last came out."""
        if not any(c.kind in PROBED for c in instance.checks):
            return instance
        state = tuple((j.status, j.output, j.changed) if (
            j := self._jobs.get((instance.id, c.id))) is not None else None
            for c in instance.checks)
        cached = self._overlaid.get(instance.id)
        if cached is not None and cached[0] is instance and cached[1] == state:
            return cached[2]
        checks = []
        for check in instance.checks:
            job = self._jobs.get((instance.id, check.id))
            if job is not None and job.check == check:
                check = replace(check, status=job.status, output=job.output,
                                changed=job.changed)
            checks.append(check)
        made = replace(instance, checks=tuple(checks))
        self._overlaid[instance.id] = (instance, state, made)
        return made

    async def start(self) -> None:
        """Begin probing (in the background)."""
        self._task = asyncio.create_task(self._run(), name="sidecar-checks")

    async def stop(self) -> None:
        """Stop probing; probes in flight are cancelled."""
        await cancel_and_wait(self._task, *self._running)
        self._task = None
        if self._notify is not None:
            self._notify.cancel()

    def _schedule(self, job: _Job, due: float) -> None:
        job.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, job))
        if self._heap[0][2] is job:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now + SLACK:
                _, _, job = heapq.heappop(self._heap)
                if not job.live:
                    continue
                if job.running or self._slots <= 0:
                    self._schedule(job, now + min(job.check.interval, 0.05))
                    break
                job.running = True
                self._slots -= 1
                task = asyncio.create_task(self._probe(job))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            wait = self._heap[0][0] - time.monotonic() if self._heap else 60.0
            self._wake.clear()
            await wait_event(self._wake, max(0.0, wait))

    async def _probe(self, job: _Job) -> None:
        try:
            result = await probe(job.check, job.container_id, self._script)
        except Exception as exc:  # a probe must never stop its check being scheduled
            log.exception("sidecar: check %s of %s failed unexpectedly", job.check.id,
                          job.container_id[:12])
            result = Result("critical", f"{job.check.name}: {type(exc).__name__}: {exc}")
        finally:
            job.running = False
            self._slots += 1
            self.probes += 1
        if not job.live:
            return
        self._record(job, result)
        interval = job.check.interval
        next_due = job.due + interval
        now = time.monotonic()
        self._schedule(job, next_due if next_due > now else now + interval)

    def _record(self, job: _Job, result: Result) -> None:
        now = time.monotonic()
        if result.status != job.status:
            job.status, job.output, job.changed, job.output_at = (
                result.status, result.output, time.time(), now)
        elif result.output != job.output and now - job.output_at >= OUTPUT_EVERY:
            job.output, job.output_at = result.output, now
        else:
            return
        if self._notify is None:
            self._notify = asyncio.get_running_loop().call_soon(self._tell)

    def _tell(self) -> None:
        self._notify = None
        self._changed()


def _same(mine: Check, stored: Check) -> bool:
    """Whether a stored check is the one defined here (whatever its verdict)."""
    return (mine.kind, mine.target, mine.interval, mine.timeout) == (
        stored.kind, stored.target, stored.interval, stored.timeout)
