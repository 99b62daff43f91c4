"""Blocking queries that feed the Consul catalog's cache of leases and services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pilotfish.catalog.backends.consul.agent import (
    LEASE_PREFIX,
    LEASE_WAIT,
    REQUEST_TIMEOUT,
    RETRY_DELAY,
    WATCH_WAIT,
    _Entry,
    _from_health,
    _version,
    log,
)
from pilotfish.catalog.backends.consul.client import ConsulClient
from pilotfish.catalog.backends.stored import StoredLease
from pilotfish.catalog.interface import BackendUnavailable, Snapshot


class ConsulWatch(ConsulClient):
    """Lease records and every service's health, as the blocking queries last returned them."""

    # -- reads -----------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        if self._failing:
            raise BackendUnavailable(
                f"consul at {self.address} unreachable ({', '.join(sorted(self._failing))} "
                "watch failing)")
        return self._snapshots.build(
            (entry.instance for entries in self._services.values() for entry in entries.values()),
            self._expiry_of)

    async def _read_lease(self, lease_id: str) -> StoredLease | None:
        _, items = await self._call(self._writer.kv.get(LEASE_PREFIX + lease_id))
        if not items:
            return None
        item = items if isinstance(items, dict) else items[0]
        try:
            return StoredLease.decode(lease_id, item.get("Value"), int(item["ModifyIndex"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed lease record %s", item.get("Key"))
            return None

    async def _live_lease(self, lease_id: str) -> StoredLease | None:
        record = self._leases.get(lease_id)
        if record is None:
            record = await self._read_lease(lease_id)
        return record if record is not None and record.live(time.time()) else None

    def _remember_lease(self, record: StoredLease) -> None:
        """Merge a lease record into the cache; renewals only move expiry forward."""
        known = self._leases.get(record.id)
        if known is not None and known.expires_at > record.expires_at:
            return  # our own newer renewal has not come back through the watch yet
        if known != record:
            self._leases[record.id] = record
            # A later expiry changes what is served only once the old one has passed (its
            # instances dropped out); before that the snapshot rebuilds when it passes.
            if known is None or known.expires_at <= time.time():
                self._changed()

    def _forget_lease(self, lease_id: str) -> None:
        if self._leases.pop(lease_id, None) is not None:
            self._changed()

    # -- watches -----------------------------------------------------------------

    async def _follow(self, name: str, load: Callable[[int], Awaitable[int]],
                      index: int) -> None:
        """Repeat a blocking query forever, resetting its index after errors, as Consul says."""
        while not self._closed:
            try:
                new = await load(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, or a reply we could not read
                if name not in self._failing:
                    log.warning("consul %s watch failing: %s", name, exc)
                    self._failing.add(name)
                    self.changes.notify()
                index = 0  # the agent may have restarted with a fresh index
                await asyncio.sleep(RETRY_DELAY)
                continue
            if name in self._failing:
                self._failing.discard(name)
                self.changes.notify()
            index = 0 if new < index else max(new, 1)

    def _blocking(self, index: int) -> dict[str, Any]:
        return {"index": index or None, "wait": f"{WATCH_WAIT:g}s"}

    def _watch_timeout(self, index: int) -> float:
        return WATCH_WAIT * 1.1 + REQUEST_TIMEOUT if index else REQUEST_TIMEOUT

    async def _load_leases(self, index: int) -> int:
        new, items = await self._call(
            self._watcher.kv.get(LEASE_PREFIX, recurse=True, index=index or None,
                                 wait=f"{LEASE_WAIT:g}s"),
            LEASE_WAIT * 1.1 + REQUEST_TIMEOUT if index else REQUEST_TIMEOUT)
        answered = time.monotonic()
        seen: dict[str, StoredLease] = {}
        for item in items or ():
            lease_id = str(item["Key"])[len(LEASE_PREFIX):]
            try:
                seen[lease_id] = StoredLease.decode(lease_id, item.get("Value"),
                                                     int(item["ModifyIndex"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed lease record %s", item.get("Key"))
        for lease_id in set(self._leases) - set(seen):
            self._forget_lease(lease_id)
        for record in seen.values():
            known = self._leases.get(record.id)
            if known is not None and known.expires_at > record.expires_at:
                continue
            if known is not None and known.expires_at == record.expires_at:
                # Our own renewal came back: learn its ModifyIndex, nothing visible changed.
                self._leases[record.id] = record
                continue
            self._remember_lease(record)
        # A blocking read that returned shows every lease record as the agent had it then.
        self.freshness.proved(answered)
        return int(new)

    async def _load_services(self, index: int) -> int:
        new, services = await self._call(
            self._watcher.catalog.services(**self._blocking(index)), self._watch_timeout(index))
        names = {name for name in (services or {}) if name != "consul"}
        for name in set(self._service_tasks) - names:
            self._service_tasks.pop(name).cancel()
            self._failing.discard(f"service {name}")
            if self._services.pop(name, None):
                self._changed()
        fresh = names - set(self._service_tasks)
        if fresh:
            indexes = await asyncio.gather(*(self._load_service(name, 0) for name in fresh))
            for name, first in zip(fresh, indexes, strict=True):
                self._service_tasks[name] = asyncio.create_task(
                    self._follow(f"service {name}", partial(self._load_service, name), first))
        return int(new)

    async def _load_service(self, name: str, index: int) -> int:
        new, nodes = await self._call(
            self._watcher.health.service(name, **self._blocking(index)),
            self._watch_timeout(index))
        known = self._services.get(name, {})
        # After an error the agent may be a fresh one whose indexes started over, so
        # a full read (index 0) rebuilds every entry instead of trusting versions.
        reusable = known if index else {}
        entries: dict[str, _Entry] = {}
        for node in nodes or ():
            service = node.get("Service") or {}
            version = _version(node)
            entry = reusable.get(str(service.get("ID")))
            if entry is None or entry.version != version:
                entry = _from_health(node, version)
            if entry is not None:
                entries[entry.instance.id] = entry
        if known != entries:
            if entries:
                self._services[name] = entries
            else:
                self._services.pop(name, None)
            self._changed()
        return int(new)
