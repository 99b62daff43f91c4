"""Follows one Docker engine and keeps, per running container, what to register for it.

Each connection subscribes to events first, then lists and inspects every running
container and replaces the whole picture (the reconcile), then applies events as they come:
a container that starts, changes health, is paused, renamed or reconnected is inspected
again (one inspect at a time per container, coalescing bursts); one that dies, stops or is
destroyed is dropped at once. A lost stream is reconnected with backoff and reconciled.

Inspecting right after `start` is slow when the engine is busy starting many containers,
so a container is inspected when it is *created*; at its `start`, a container whose
endpoints do not depend on what the start allocated (host, none and container:<id> modes)
is decided from that inspect, marked running (its health check, if any, "starting"), and
later events correct it like any other. Bridge-mode containers are inspected after the
start, which is when Docker allocates their published ports.
After every change the owner is told, and reads the full desired set from `entries()` (it
diffs; see Registrar.sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pilotfish.catalog.model import Instance
from pilotfish.loop import cancel_and_wait
from pilotfish.sidecar.addresses import Details
from pilotfish.sidecar.check_labels import SIDECAR_CHECK
from pilotfish.sidecar.containers import Decision, Rules, decide
from pilotfish.sidecar.docker import DockerSource, DockerUnavailable
from pilotfish.sidecar.stats import SidecarStats
from pilotfish.sidecar.stopping import Marks

log = logging.getLogger(__name__)

Desired = Callable[[], None]

GONE = frozenset({"die", "stop", "destroy", "oom"})
CHANGED = frozenset({"start", "restart", "pause", "unpause", "health_status", "rename",
                     "update"})
STATIC_MODES = ("host", "none", "container:")
INSPECT_CONCURRENCY = 32
MAX_RENAMES_LOGGED = 1024  # distinct SERVICE_NAME normalisations remembered as logged


class ContainerFollower:
    """The desired instances of every running container on one engine, kept current."""

    def __init__(self, source: DockerSource, rules: Rules, desired: Desired,
                 stats: SidecarStats, freshness: float,
                 backoff: tuple[float, float] = (0.1, 5.0)) -> None:
        self.source = source
        self.rules = rules
        self.stats = stats
        self.freshness = freshness  # how recently Docker must have answered to be trusted
        self.engine_id: str | None = None
        self.connected = False
        self.reconciled = False  # since the current connection was made
        self.last_seen = 0.0  # monotonic time Docker last answered
        self.decisions: dict[str, Decision] = {}
        self._details: dict[str, Details] = {}
        self._desired = desired
        self._backoff = backoff
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._created: dict[str, asyncio.Task[Details | None]] = {}
        self._started: set[str] = set()
        self._limit = asyncio.Semaphore(INSPECT_CONCURRENCY)
        self._tasks: list[asyncio.Task[None]] = []
        self._first = asyncio.Event()
        self._renames_logged: set[tuple[str, str]] = set()
        self.marks = Marks(self._changed)  # containers withdrawn before they die
        self.departures: dict[str, str] = {}  # instance id -> why it went (for the log)

    @property
    def fresh(self) -> bool:
        """Whether the picture can be trusted now: connected, reconciled, and Docker has
        answered within `freshness` seconds."""
        return (self.connected and self.reconciled
                and time.monotonic() - self.last_seen <= self.freshness)

    def name_of(self, container_id: str) -> str:
        """A running container's name (its id where the inspect had none)."""
        name = str((self._details.get(container_id) or {}).get("Name") or "").lstrip("/")
        return name or container_id[:12]

    def instances(self) -> list[Instance]:
        """Every instance the running containers want registered."""
        return [i for _, i in self.entries()]

    def entries(self) -> list[tuple[str, Instance]]:
        """(container id, instance) for every instance the running containers want
        registered; those of a container being stopped are marked critical."""
        return [(container_id, self.marks.apply(container_id, i))
                for container_id, decision in self.decisions.items()
                for i in decision.instances]

    async def start(self) -> None:
        """Begin following (in the background) and pinging the engine."""
        self._tasks = [asyncio.create_task(self._follow(), name="sidecar-follow"),
                       asyncio.create_task(self._ping(), name="sidecar-ping")]

    async def wait_reconciled(self, timeout: float) -> bool:
        """Wait until the first reconcile is done; False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self._first.is_set()

    async def stop(self) -> None:
        """Stop following and every inspect in flight."""
        await cancel_and_wait(*self._tasks, *self._busy.values(), *self._created.values())
        self._tasks = []
        self.marks.clear()

    def _seen(self) -> None:
        self.last_seen = time.monotonic()

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.freshness / 3)
            with contextlib.suppress(DockerUnavailable):
                await self.source.ping()
                self._seen()

    async def _follow(self) -> None:
        delay = self._backoff[0]
        while True:
            started = time.monotonic()
            try:
                await self._session()
                log.warning("sidecar: the Docker event stream ended; reconnecting")
            except DockerUnavailable as exc:
                log.warning("sidecar: %s; reconnecting in %.1fs", exc, delay)
            except Exception:  # whatever it was, following must go on
                log.exception("sidecar: following Docker failed; reconnecting in %.1fs", delay)
            finally:
                self.connected = self.reconciled = False
            self.stats.reconnects += 1
            if time.monotonic() - started > 10:
                delay = self._backoff[0]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _session(self) -> None:
        if self.engine_id is None:
            self.engine_id = await self.source.engine_id()
        async with self.source.events() as stream:
            self.connected = True
            self._seen()
            await self._reconcile()
            async for event in stream:
                self._seen()
                self._handle(event)

    async def _reconcile(self) -> None:
        started = time.monotonic()
        ids = await self.source.running()
        found = await asyncio.gather(*(self._inspect(i) for i in ids))
        self._details = {i: d for i, d in zip(ids, found, strict=True) if d is not None}
        previous, self.decisions = self.decisions, {}
        for container_id, details in self._details.items():
            self.decisions[container_id] = self._decide(details, previous.get(container_id))
        self.marks.keep(self._details)
        self.stats.reconciles += 1
        self.stats.reconcile_seconds = time.monotonic() - started
        self.reconciled = True
        self._seen()
        log.info("sidecar: reconciled %d running containers, %d instances in %.3fs",
                 len(self._details), len(self.instances()), self.stats.reconcile_seconds)
        self._desired()
        self._first.set()

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("Type", "")
        action = str(event.get("Action") or event.get("status") or "").split(":")[0].strip()
        actor = event.get("Actor") or {}
        if kind == "container":
            container_id = str(actor.get("ID") or event.get("id") or "")
        elif kind == "network" and action in ("connect", "disconnect"):
            container_id = str((actor.get("Attributes") or {}).get("container") or "")
        else:
            return
        if not container_id:
            return
        self.stats.events[action] = self.stats.events.get(action, 0) + 1
        if kind == "network":
            if container_id in self.decisions:  # not the connects of a container starting
                self.touch(container_id)
        elif action == "create":
            self._created[container_id] = asyncio.create_task(self._inspect(container_id))
        elif action in GONE:
            if action == "destroy":
                self._drop_created(container_id)
            self._forget(container_id, f"container {action}")
        elif action == "kill":
            details = self._details.get(container_id) or {}
            self.marks.killed(container_id, details, actor.get("Attributes") or {})
        elif action in CHANGED:
            if action in ("start", "restart"):
                self.marks.unmark(container_id)
            if action == "start":
                self._started.add(container_id)
            if action == "health_status":
                status = str(event.get("Action") or event.get("status") or "")
                self.marks.health(container_id, status.partition(":")[2].strip())
            self.touch(container_id)

    async def _inspect(self, container_id: str) -> Details | None:
        async with self._limit:
            return await self.source.inspect(container_id)

    def _drop_created(self, container_id: str) -> None:
        task = self._created.pop(container_id, None)
        if task is not None:
            task.cancel()

    def touch(self, container_id: str) -> None:
        """Inspect a container again soon (once more, if an inspect is already running)."""
        if container_id in self._busy:
            self._again.add(container_id)
            return
        self._busy[container_id] = asyncio.create_task(self._refresh(container_id))

    def _forget(self, container_id: str, why: str) -> None:
        if container_id in self._busy:
            self._again.add(container_id)  # an inspect in flight may predate the death
        details = self._details.pop(container_id, None)
        self.marks.unmark(container_id, quiet=True)
        decision = self.decisions.pop(container_id, None)
        if decision is not None:
            for instance in decision.instances:
                self.departures[instance.id] = why
            self._changed()
        if details is not None:
            self._touch_joiners(container_id, details)

    async def _refresh(self, container_id: str) -> None:
        try:
            while True:
                self._again.discard(container_id)
                details = await self._at_start(container_id)
                if details is None:
                    details = await self._inspect(container_id)
                self._apply(container_id, details)
                if container_id not in self._again:
                    return
        except DockerUnavailable as exc:
            log.warning("sidecar: inspect %s: %s (the reconnect will reconcile)",
                        container_id[:12], exc)
        finally:
            self._busy.pop(container_id, None)

    async def _at_start(self, container_id: str) -> Details | None:
        """For a container just started: its create-time inspect, marked running, when its
        network mode makes that enough; else None (inspect it now)."""
        if container_id not in self._started:
            return None
        self._started.discard(container_id)
        created = self._created.pop(container_id, None)
        if created is None:
            return None
        await asyncio.wait([created])
        if created.cancelled() or created.exception() is not None:
            return None
        details = created.result()
        mode = str((details or {}).get("HostConfig", {}).get("NetworkMode") or "")
        if details is None or not mode.startswith(STATIC_MODES):
            return None
        check = (details.get("Config") or {}).get("Healthcheck") or {}
        checked = bool(check.get("Test")) and check.get("Test") != ["NONE"]
        state = {"Status": "running", "Running": True, "Paused": False,
                 **({"Health": {"Status": "starting"}} if checked else {})}
        return {**details, "State": state}

    def _apply(self, container_id: str, details: Details | None) -> None:
        self._seen()
        if details is None or not (details.get("State") or {}).get("Running"):
            self._forget(container_id, "container gone" if details is None else
                         "container not running")
            return
        self._details[container_id] = details
        previous = self.decisions.get(container_id)
        decision = self._decide(details, previous)
        self.decisions[container_id] = decision
        if decision != previous:
            self._changed()
        self._touch_joiners(container_id, details)

    def _touch_joiners(self, container_id: str, details: Details) -> None:
        """Containers sharing this one's network take its endpoints: decide them again."""
        name = str(details.get("Name", "")).lstrip("/")
        for other, decision in list(self.decisions.items()):
            joins = decision.joins
            if other != container_id and joins and (
                    joins == name or container_id.startswith(joins)):
                self.touch(other)

    def _decide(self, details: Details, previous: Decision | None) -> Decision:
        decision = decide(details, self.rules, self._joined)
        if previous is None or previous.skipped != decision.skipped:
            name = str(details.get("Name", "")).lstrip("/")
            for skip in decision.skipped:
                log.info("sidecar: %s: not registered (%s): %s", name, skip.reason, skip.detail)
        _log_bad_checks(details, decision, previous)
        for renamed in decision.renamed:
            if renamed not in self._renames_logged:
                if len(self._renames_logged) >= MAX_RENAMES_LOGGED:
                    self._renames_logged.clear()
                self._renames_logged.add(renamed)
                log.info("sidecar: SERVICE_NAME %r is registered as %r (a DNS label: lower "
                         "case, '_' and '.' as '-')", renamed[0][:80], renamed[1])
        return decision

    def _joined(self, reference: str) -> Details | None:
        """A running container by id, id prefix or name (for `container:<ref>` modes)."""
        found = self._details.get(reference)
        if found is not None:
            return found
        for container_id, details in self._details.items():
            if container_id.startswith(reference) or details.get("Name") == f"/{reference}":
                return details
        return None

    def _changed(self) -> None:
        self.stats.changes += 1
        if self.reconciled:
            self._desired()

    def skipped(self) -> Iterable[tuple[str, int]]:
        """How many containers' ports are skipped, by reason."""
        counts: dict[str, int] = {}
        for decision in self.decisions.values():
            for skip in decision.skipped:
                counts[skip.reason] = counts.get(skip.reason, 0) + 1
        return counts.items()



def _bad_checks(decision: Decision | None) -> set[tuple[str, str]]:
    return {(i.id, c.output) for i in (decision.instances if decision else ())
            for c in i.checks if c.id == SIDECAR_CHECK}


def _log_bad_checks(details: Details, decision: Decision, previous: Decision | None) -> None:
    """One line per instance whose check settings cannot be used (when that is new)."""
    name = str(details.get("Name", "")).lstrip("/")
    for instance_id, output in sorted(_bad_checks(decision) - _bad_checks(previous)):
        log.warning("sidecar: %s: %s registered critical: %s", name, instance_id, output)
