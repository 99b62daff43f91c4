"""The embedded backend: an in-process dict and an expiry heap, for a single host."""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from dataclasses import dataclass, field

from pilotfish.catalog.entries import ConfigEntry, decode_entry
from pilotfish.catalog.interface import Catalog, EntryConflict, Snapshot, UnknownLease
from pilotfish.catalog.model import Instance, Lease


@dataclass(slots=True)
class _LeaseState:
    ttl: int
    owner: str
    deadline: float  # time.monotonic()
    instances: set[str] = field(default_factory=set)


class MemoryCatalog(Catalog):
    """Exact expiry: every call first drops what has lapsed, and a timer wakes watchers on time."""

    def __init__(self) -> None:
        super().__init__()
        self._leases: dict[str, _LeaseState] = {}
        self._instances: dict[str, Instance] = {}
        self._expiry: list[tuple[float, str]] = []
        self._stale = 0  # heap entries of revoked leases, dropped when they outnumber the live
        self._index = 1
        self._snapshot: Snapshot | None = None
        self._timer: asyncio.Handle | None = None
        self._timer_deadline = 0.0
        self._entries: dict[str, tuple[bytes, int]] = {}
        self._entry_versions = 0  # one counter for every entry: a version is never reused

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> MemoryCatalog:
        """memory:// takes no parameters."""
        catalog = cls()
        await catalog.start()
        return catalog

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        self._expire_due()
        lease_id = uuid.uuid4().hex
        lease = Lease(id=lease_id, ttl=ttl, owner=owner)
        state = _LeaseState(ttl=lease.ttl, owner=owner, deadline=time.monotonic() + lease.ttl)
        self._leases[lease_id] = state
        self._push_expiry(state.deadline, lease_id)
        return self._lease_value(lease_id, state)

    async def _keepalive(self, lease_id: str) -> Lease:
        self._expire_due()
        state = self._leases.get(lease_id)
        if state is None:
            raise UnknownLease(lease_id)
        state.deadline = time.monotonic() + state.ttl
        return self._lease_value(lease_id, state)

    async def _lease(self, lease_id: str) -> Lease | None:
        self._expire_due()
        state = self._leases.get(lease_id)
        return None if state is None else self._lease_value(lease_id, state)

    async def _revoke(self, lease_id: str) -> bool:
        self._expire_due()
        state = self._leases.pop(lease_id, None)
        if state is None:
            return False
        self._drop_lease(lease_id, state)
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._expiry):
            self._expiry = [entry for entry in self._expiry if entry[1] in self._leases]
            heapq.heapify(self._expiry)
            self._stale = 0
        return True

    async def _register(self, instance: Instance) -> bool:
        self._expire_due()
        state = self._leases.get(instance.lease)
        if state is None:
            raise UnknownLease(instance.lease)
        previous = self._instances.get(instance.id)
        if previous == instance:
            return False
        if previous is not None and previous.lease != instance.lease:
            old = self._leases.get(previous.lease)
            if old is not None:
                old.instances.discard(instance.id)
        self._instances[instance.id] = instance
        state.instances.add(instance.id)
        self._changed()
        return previous is None

    async def _deregister(self, instance_id: str) -> Instance | None:
        self._expire_due()
        instance = self._instances.pop(instance_id, None)
        if instance is None:
            return None
        state = self._leases.get(instance.lease)
        if state is not None:
            state.instances.discard(instance_id)
        self._changed()
        return instance

    async def _config_entry(self, name: str) -> ConfigEntry:
        data, version = self._entries.get(name, (b"", 0))
        return decode_entry(name, data, version)

    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        if self._entries.get(name, (b"", 0))[1] != version:
            raise EntryConflict(name, version)
        self._entry_versions += 1
        self._entries[name] = (data, self._entry_versions)
        return decode_entry(name, data, self._entry_versions)

    async def snapshot(self) -> Snapshot:
        self._expire_due()
        if self._snapshot is None:
            self._snapshot = Snapshot(self._index, self._instances)
        return self._snapshot

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def lease_count(self) -> int:
        """Live leases, for metrics."""
        return len(self._leases)

    def _lease_value(self, lease_id: str, state: _LeaseState) -> Lease:
        expires_at = time.time() + (state.deadline - time.monotonic())
        return Lease(id=lease_id, ttl=state.ttl, owner=state.owner, expires_at=expires_at)

    def _changed(self) -> None:
        self._index += 1
        self._snapshot = None
        self.changes.notify()

    def _drop_lease(self, lease_id: str, state: _LeaseState) -> None:
        doomed = [i for i in state.instances if self._instances[i].lease == lease_id]
        for instance_id in doomed:
            del self._instances[instance_id]
        if doomed:
            self._changed()

    def _push_expiry(self, deadline: float, lease_id: str) -> None:
        heapq.heappush(self._expiry, (deadline, lease_id))
        self._arm_timer()

    def _expire_due(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, lease_id = heapq.heappop(self._expiry)
            state = self._leases.get(lease_id)
            if state is None:
                self._stale = max(0, self._stale - 1)
                continue
            if state.deadline > now:  # renewed since it was queued
                heapq.heappush(self._expiry, (state.deadline, lease_id))
                continue
            del self._leases[lease_id]
            self.expirations += 1
            self._drop_lease(lease_id, state)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if not self._expiry:
            return
        deadline = self._expiry[0][0]
        if self._timer is not None:
            if self._timer_deadline <= deadline:
                return
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer_deadline = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._expire_due()
