"""CheckSweeper: the registry's one timer for check deadlines (overdue ttl reports, and
instances critical for longer than their checks' deregister_after)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pilotfish.catalog.checks import deregister_due, expire_overdue, next_deadline
from pilotfish.catalog.interface import Catalog, CatalogError, Snapshot, UnknownLease
from pilotfish.catalog.model import Instance
from pilotfish.loop import cancel_and_wait

log = logging.getLogger(__name__)

IDLE_WAIT = 30.0  # with no deadline in sight, look again after a change or this long
RETRY_WAIT = 1.0  # a backend that failed a sweep is asked again after this long


class CheckSweeper:
    """Writes overdue ttl checks critical ("TTL expired") and deregisters instances whose
    check has been critical past its deregister_after. It waits on one timer (the earliest
    deadline) or the catalog's next change; its writes are idempotent, so several registry
    API processes on one cluster backend may each run one."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.expired = 0  # ttl checks written critical
        self.deregistered = 0
        self._first_seen: dict[tuple[str, str], float] = {}  # critical, with no `changed`
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run in the background until stop()."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _run(self) -> None:
        index = -1
        wait = 0.0
        while True:
            try:
                snapshot = await self.catalog.watch(index, wait)
                index = snapshot.index
                wait = await self.sweep(snapshot, time.time())
            except CatalogError as exc:
                log.warning("check sweep failed, retrying: %s", exc)
                wait = RETRY_WAIT

    async def sweep(self, snapshot: Snapshot, now: float) -> float:
        """Do what is due as of `now`; how long until the next deadline (capped)."""
        soonest = now + IDLE_WAIT
        seen: set[tuple[str, str]] = set()
        for instance in snapshot.instances.values():
            if not instance.checks:
                continue
            for check in instance.checks:
                if check.status == "critical" and not check.changed:
                    key = (instance.id, check.id)
                    seen.add(key)
                    self._first_seen.setdefault(key, now)
            first = min((self._first_seen.get((instance.id, c.id), now) for c in instance.checks),
                        default=now)
            due = deregister_due(instance, now, first)
            if due is not None and due <= now:
                await self._deregister(instance.id)
                continue
            expired = expire_overdue(instance, now)
            if expired is not None:
                await self._write(expired)
                instance = expired
            for moment in (due, next_deadline(instance)):
                if moment is not None:
                    soonest = min(soonest, moment)
        for key in set(self._first_seen) - seen:
            del self._first_seen[key]
        return max(0.0, soonest - now) + 0.01

    async def _write(self, instance: Instance) -> None:
        with contextlib.suppress(UnknownLease):  # its lease went meanwhile: so did it
            await self.catalog.register(instance)
            self.expired += 1
            log.info("critical: %s of %s, ttl check expired", instance.id, instance.service)

    async def _deregister(self, instance_id: str) -> None:
        removed = await self.catalog.deregister(instance_id)
        if removed is not None:
            self.deregistered += 1
            log.info("removed: %s of %s, critical past its check's deregister_after",
                     instance_id, removed.service)
