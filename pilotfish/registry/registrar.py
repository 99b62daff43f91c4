"""Holds one lease for a set of instances and keeps it alive, re-registering when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import replace

from pilotfish.loop import cancel_and_wait
from pilotfish.registry.catalog import Catalog, UnknownLease
from pilotfish.registry.model import Instance, ttl_seconds

log = logging.getLogger(__name__)


class Registrar:
    """One lease, many instances, one keepalive per interval (ttl / 3).

    When a keepalive reports the lease unknown (it lapsed, or the registry restarted empty),
    a new lease is taken and every instance is registered again; when the backend cannot be
    reached, keepalives are retried every second until it answers.
    """

    def __init__(
        self, catalog: Catalog, ttl: int, owner: str, instances: Iterable[Instance] = ()
    ) -> None:
        self.catalog = catalog
        self.ttl = ttl_seconds(ttl)
        self.owner = owner
        self.lease_id: str | None = None
        self.reregistrations = 0
        self._instances: dict[str, Instance] = {i.id: i for i in instances}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def interval(self) -> float:
        """Seconds between keepalives."""
        return self.ttl / 3

    async def start(self) -> None:
        """Take the lease, register the instances given so far, and begin keeping it alive."""
        async with self._lock:
            await self._renew_lease()
        log.info("registrar %s holds %d instances on lease %s (ttl %ds)",
                 self.owner, len(self._instances), self.lease_id, self.ttl)
        self._task = asyncio.create_task(self._keepalive_loop(), name=f"registrar-{self.owner}")

    async def stop(self, revoke: bool = True) -> None:
        """Stop keeping alive; revoke the lease (removing its instances) unless told not to."""
        await cancel_and_wait(self._task)
        self._task = None
        if revoke and self.lease_id is not None:
            with contextlib.suppress(Exception):
                await self.catalog.revoke(self.lease_id)
            self.lease_id = None

    async def add(self, instance: Instance) -> None:
        """Register (or update) an instance on this registrar's lease."""
        async with self._lock:
            if self.lease_id is None:
                await self._renew_lease()
            assert self.lease_id is not None
            instance = replace(instance, lease=self.lease_id)
            self._instances[instance.id] = instance
            try:
                await self.catalog.register(instance)
            except UnknownLease:
                await self._renew_lease()

    async def remove(self, instance_id: str) -> None:
        """Deregister an instance this registrar holds."""
        async with self._lock:
            if self._instances.pop(instance_id, None) is not None:
                await self.catalog.deregister(instance_id)

    @property
    def instances(self) -> dict[str, Instance]:
        """What this registrar keeps registered, by id."""
        return dict(self._instances)

    async def _renew_lease(self) -> None:
        lease = await self.catalog.create_lease(self.ttl, self.owner)
        self.lease_id = lease.id
        try:
            for instance_id, instance in list(self._instances.items()):
                moved = replace(instance, lease=lease.id)
                self._instances[instance_id] = moved
                await self.catalog.register(moved)
        except BaseException:
            self.lease_id = None  # half done: the next keepalive round starts over
            raise

    async def _keepalive_loop(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                async with self._lock:
                    await self._keepalive_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registrar %s: keepalive failed, retrying: %s", self.owner, exc)
                delay = min(1.0, self.interval)
            else:
                delay = self.interval

    async def _keepalive_once(self) -> None:
        if self.lease_id is None:
            await self._renew_lease()
            return
        try:
            await self.catalog.keepalive(self.lease_id)
        except UnknownLease:
            log.info("registrar %s: lease lapsed, registering %d instances again",
                     self.owner, len(self._instances))
            self.reregistrations += 1
            self.lease_id = None
            await self._renew_lease()

