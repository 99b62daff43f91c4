"""The elected reaper (deletes lapsed leases with their instances) and the freshness probe."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from typing import Any

from kazoo.exceptions import KazooException, LockTimeout, NoNodeError, NotEmptyError

from pilotfish.catalog.backends.stored import WRITE_ATTEMPTS
from pilotfish.catalog.backends.zookeeper.cache import ZooKeeperCache
from pilotfish.catalog.backends.zookeeper.nodes import (
    ELECTION_WAIT,
    INSTANCES,
    ORPHAN_GRACE,
    PROBE_EVERY,
    REAP_INTERVAL,
    REAP_MARGIN,
    TXN_BATCH,
    Op,
    log,
)
from pilotfish.catalog.interface import BackendUnavailable


class ZooKeeperReaper(ZooKeeperCache):
    """Lease removal, the reaper election (kazoo's Lock recipe) and the freshness probe."""

    @property
    def leader(self) -> bool:
        """Whether this process currently holds the reaper lock."""
        return self._leader

    async def _remove_lease(self, lease_id: str, version: int) -> bool:
        """Delete a lease with its instances and markers; `version` -1 means unconditionally.

        False when it was gone already or (with a version) renewed meanwhile.
        """
        lease_path = self._lease_path(lease_id)
        missing: set[str] = set()  # markers whose instance node is gone
        for _ in range(WRITE_ATTEMPTS):
            try:
                names: list[str] = await self._call(
                    lambda: self._client.get_children_async(lease_path))
            except NoNodeError:
                self._drop_lease(lease_id)
                return False
            batches = [names[i:i + TXN_BATCH] for i in range(0, len(names), TXN_BATCH)] or [[]]
            retry = False
            for number, batch in enumerate(batches):
                last = number == len(batches) - 1
                ops: list[Op] = []
                if version >= 0 and not last:
                    ops.append(("check", lease_path, version))
                for name in batch:
                    if name not in missing:
                        ops.append(("delete", self._instance_path(name), -1))
                    ops.append(("delete", self._marker_path(lease_id, name), -1))
                if last:
                    ops.append(("delete", lease_path, version))
                failed = await self._multi(
                    ops, functools.partial(self._removed, lease_id, batch, last))
                if failed is None:
                    continue
                index, error = failed
                op = ops[index]
                if op[1] == lease_path:
                    if isinstance(error, NotEmptyError):
                        retry = True  # registered onto it meanwhile: list again
                        break
                    if isinstance(error, NoNodeError):
                        self._drop_lease(lease_id)
                    return False  # gone, or renewed (BadVersion)
                if isinstance(error, NoNodeError) and op[1].startswith(
                    f"{self.root}/{INSTANCES}/"
                ):
                    missing.add(op[1].rsplit("/", 1)[-1])
                retry = True
                break
            if not retry:
                return True
        raise self._contention("remove lease", lease_id)

    def _removed(self, lease_id: str, batch: list[str], last: bool, _: list[Any]) -> None:
        """Drop what one removal multi deleted from the cache, in answer order."""
        for name in batch:
            entry = self._instances.get(name)
            if entry is not None and entry.instance.lease == lease_id:
                self._drop_instance(name)
        if last:
            self._drop_lease(lease_id)

    # the elected reaper

    def _elect(self) -> None:
        """Thread: take the reaper lock (kazoo Lock recipe) and hold it while the session lives.

        Reaping is safe with two reapers (every delete is version-checked or guarded by the
        markers); the election only keeps the work to one process.
        """
        identifier = f"{socket.gethostname()}:{os.getpid()}"
        while not self._stopping.is_set():
            if not self._client.connected:
                self._stopping.wait(0.2)
                continue
            self._session_lost.clear()
            lock = self._lock = self._client.Lock(f"{self.root}/reaper", identifier)
            if self._stopping.is_set():
                break
            try:
                if not lock.acquire(timeout=ELECTION_WAIT):
                    continue
            except LockTimeout:
                continue
            except Exception as exc:  # connection trouble, cancellation at close
                log.debug("reaper election: %s", exc)
                self._stopping.wait(0.5)
                continue
            log.info("this process reaps lapsed leases under %s", self.root)
            self._post(self._set_leader, True)
            while not (self._stopping.is_set() or self._session_lost.is_set()):
                self._stopping.wait(0.2)
            self._post(self._set_leader, False)
            with contextlib.suppress(Exception):
                if not self._session_lost.is_set():
                    lock.release()

    async def _probe_loop(self) -> None:
        """Sync through the leader every PROBE_EVERY (one at a time): each answer proves the
        cache current as of when it was asked (ZooKeeper answers in order, after the watch
        events before it). A sync left unanswered is what a frozen server looks like."""
        probe: asyncio.Future[Any] | None = None
        while True:
            await asyncio.sleep(PROBE_EVERY)
            if self._synced and (probe is None or probe.done()):
                probe = self._issue(lambda: self._client.sync_async(self.root),
                                    functools.partial(self._proved, time.monotonic()))
            self._report_staleness()

    def _proved(self, asked: float, result: Any) -> None:
        if result.successful() and self._synced:
            self.freshness.proved(asked)

    def _report_staleness(self) -> None:
        """One log line when the cache stops being proven current, one when it is again;
        watchers are woken so that views turn stale and API reads answer 503."""
        silent = self.freshness.age() > self._read_grace
        if silent and not self._stale_reported and self._loaded:
            log.warning("ZooKeeper at %s: no sync answered for %.1fs; expiry paused, "
                        "serving the last view", ",".join(self.hosts), self.freshness.age())
            self.changes.notify()
        elif not silent and self._stale_reported:
            log.info("ZooKeeper at %s answering syncs again", ",".join(self.hosts))
        self._stale_reported = silent and self._loaded

    def _set_leader(self, leader: bool) -> None:
        self._leader = leader

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            if not (self._leader and self._synced):
                continue
            try:
                await self._reap_once()
            except (BackendUnavailable, KazooException) as exc:
                log.debug("reaping paused: %s", exc)
            except Exception:
                log.exception("reaping failed")

    async def _reap_once(self) -> int:
        """Delete every lease that lapsed (with its instances), and orphaned instances."""
        if self.freshness.stale:
            return 0  # a reaper that cannot see renewals must not delete anything
        now = self.freshness.clock()
        lapsed = [(lease_id, entry.version) for lease_id, entry in self._leases.items()
                  if self.freshness.expiry(entry.expires_at) + REAP_MARGIN <= now]
        removed = 0
        for lease_id, version in lapsed[:200]:
            if await self._remove_lease(lease_id, version):
                removed += 1
                self.reaped += 1
        await self._reap_orphans()
        return removed

    async def _reap_orphans(self) -> None:
        """Instances whose lease node is missing (left by hand or by an older writer)."""
        mono = time.monotonic()
        for instance_id, entry in list(self._instances.items())[:10_000]:
            if entry.instance.lease in self._leases:
                self._orphan_since.pop(instance_id, None)
                continue
            first = self._orphan_since.setdefault(instance_id, mono)
            if mono - first < ORPHAN_GRACE:
                continue
            path = self._lease_path(entry.instance.lease)
            if await self._call(functools.partial(self._client.exists_async, path)) is None:
                log.info("deleting instance %s: its lease is gone", instance_id)
                ops: list[Op] = [("delete", self._instance_path(instance_id), entry.version)]
                await self._multi(ops, functools.partial(self._drop_orphan, instance_id))
            self._orphan_since.pop(instance_id, None)

    def _drop_orphan(self, instance_id: str, _: list[Any]) -> None:
        self._drop_instance(instance_id)
