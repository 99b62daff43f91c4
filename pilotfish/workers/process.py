"""One worker slot: its process, its channel, and restarting it when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from pilotfish.metrics import Sample
from pilotfish.workers.channel import Channel, ChannelClosed
from pilotfish.workers.logs import replay
from pilotfish.workers.part import sum_samples
from pilotfish.workers.shipping import ViewShipper
from pilotfish.workers.spawn import SpawnedProcess

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds a worker may take to import, bind and report ready
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0  # seconds before a restart, doubling per quick death
STEADY = 10.0  # a worker that ran this long before dying is restarted at the first backoff

StartBody = Callable[[int], dict[str, Any]]
"""The start message for worker `index`: its parts and their configs, asked afresh."""
Reports = Callable[[int, str, str, Any], None]
"""(worker, part, kind, body): a worker told the parent something."""


class WorkerSlot:
    """Worker number `index`: started, watched, restarted with backoff until stopped."""

    def __init__(self, index: int, shipper: ViewShipper, start_body: StartBody,
                 reports: Reports, argv: tuple[str, ...]) -> None:
        self.index = index
        self.shipper = shipper
        self.start_body = start_body
        self.reports = reports
        self.argv = argv
        self.process: SpawnedProcess | None = None
        self.channel: Channel | None = None
        self.live = False  # started its parts and still running
        self.restarts = 0
        self.last: dict[str, list[Sample]] = {}  # its counters at the last refresh
        self.retired: dict[str, list[Sample]] = {}  # the counters of dead incarnations
        self.started = asyncio.get_running_loop().create_future()  # the first start
        self.stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The running worker's process id."""
        return self.process.pid if self.process is not None else None

    def run(self) -> None:
        """Start the worker and keep it running until `stop`."""
        self._task = asyncio.create_task(self._keep_running(), name=f"worker-{self.index}")

    async def _keep_running(self) -> None:
        quick_deaths = 0
        while not self.stopping:
            began = time.monotonic()
            try:
                await self._start_once()
            except Exception as exc:
                if not self.started.done():
                    code = self.process.returncode if self.process is not None else None
                    log.error("worker %d failed to start: %s (exit code %s)", self.index, exc,
                              code)
                    self.started.set_exception(exc)
                    await self._kill()
                    return
                log.warning("worker %d failed to start: %s", self.index, exc)
            else:
                if not self.started.done():
                    self.started.set_result(None)
                assert self.process is not None
                code = await self.process.wait()
                if self.stopping:
                    return
                log.warning("worker %d (pid %d) exited with code %s; restarting", self.index,
                            self.process.pid, code)
            self._retire()
            quick_deaths = 0 if time.monotonic() - began > STEADY else quick_deaths + 1
            self.restarts += 1
            await self._kill()
            await asyncio.sleep(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, quick_deaths - 1)))

    async def _start_once(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            theirs.set_inheritable(True)  # posix_spawn passes inherited fds, not pass_fds
            self.process = SpawnedProcess.start([
                sys.executable, "-m", "pilotfish.workers.main", str(theirs.fileno()),
                *self.argv])
        finally:
            theirs.close()
        self.channel = channel = await Channel.open(ours, self._handle)
        body = self.start_body(self.index)

        body["view"] = self.shipper.attach(self.index, channel.send_encoded)  # then every diff
        await channel.call("start", body, timeout=START_TIMEOUT)
        self.live = True
        log.info("worker %d running as pid %d", self.index, self.process.pid)

    def _handle(self, kind: str, body: Any) -> Any:
        if kind == "report":
            part, what, value = body
            self.reports(self.index, part, what, value)
        elif kind == "log":
            replay(self.index, body)
        return None

    def _retire(self) -> None:
        """Keep a dead worker's counters, so the sums never go back."""
        self.live = False
        self.shipper.detach(self.index)
        for part, samples in self.last.items():
            self.retired[part] = [sample for sample in sum_samples(
                [self.retired.get(part, ()), samples]) if sample[0].endswith("_total")]
        self.last = {}

    def samples(self, part: str) -> list[Sample]:
        """Its counters for one part: the last refresh plus those of its dead incarnations."""
        return sum_samples([self.last.get(part, ()), self.retired.get(part, ())])

    async def refresh(self, timeout: float) -> None:
        """Ask the worker for its counters now (keep the last ones if it does not answer)."""
        if self.live and self.channel is not None:
            with contextlib.suppress(TimeoutError, ChannelClosed, RuntimeError):
                self.last = await self.channel.call("counters", None, timeout)

    def tell(self, kind: str, body: Any) -> None:
        """Send the worker a message, if it is running."""
        if self.live and self.channel is not None:
            self.channel.tell(kind, body)

    async def call(self, kind: str, body: Any, timeout: float) -> Any:
        """Ask the running worker something (ChannelClosed when it is not running)."""
        if not self.live or self.channel is None:
            raise ChannelClosed(f"worker {self.index} is not running")
        return await self.channel.call(kind, body, timeout)

    async def stop(self, grace: float) -> None:
        """Ask the worker to drain within `grace`, then make sure it has gone."""
        self.stopping = True
        if self.live and self.channel is not None:
            with contextlib.suppress(TimeoutError, ChannelClosed, RuntimeError):
                await self.channel.call("drain", grace, timeout=grace + 1.0)
        self.live = False
        self.shipper.detach(self.index)
        await self._kill(wait=2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _kill(self, wait: float = 0.0) -> None:
        process, self.process = self.process, None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if process is None:
            return
        if process.returncode is None and wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), wait)
        if process.returncode is None:
            process.kill()
            await process.wait()
        self.process = None
