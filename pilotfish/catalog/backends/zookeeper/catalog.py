"""ZooKeeperCatalog: the catalog operations on top of the session, the cache and the reaper."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import ZnodeStat

from pilotfish.catalog.backends.credentials import split_credentials
from pilotfish.catalog.backends.stored import (
    WRITE_ATTEMPTS,
    Conflict,
    StoredLease,
    retry_on_conflict,
)
from pilotfish.catalog.backends.zookeeper.nodes import (
    CONNECT_WAIT,
    OP_TIMEOUT,
    SESSION_TIMEOUT,
    Op,
    _encode,
    _InstanceEntry,
    log,
    parse_zk_url,
)
from pilotfish.catalog.backends.zookeeper.reaper import ZooKeeperReaper
from pilotfish.catalog.backends.zookeeper.tls import preflight, tls_from_url
from pilotfish.catalog.entries import ConfigEntry, decode_entry
from pilotfish.catalog.interface import EntryConflict, UnknownLease
from pilotfish.catalog.model import Instance, InvalidField, Lease
from pilotfish.loop import cancel_and_wait


class ZooKeeperCatalog(ZooKeeperReaper):
    """The catalog on a ZooKeeper ensemble: `zk://h1:2181[,h2:2181...]/chroot`."""

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> ZooKeeperCatalog:
        """Connect to the ensemble a zk:// URL names (waiting a few seconds for it); zks://
        is TLS to the secureClientPort, verified with `ca_file` (see `tls`)."""
        url, credentials = split_credentials(url)
        url, tls = tls_from_url(url, ca_file)
        hosts, root, options = parse_zk_url(url)
        if tls is not None:
            await asyncio.to_thread(preflight, hosts, tls)
        catalog = cls(hosts, root, session_timeout=options.get("session_timeout",
                                                                SESSION_TIMEOUT),
                      op_timeout=options.get("timeout", OP_TIMEOUT), credentials=credentials,
                      tls=tls)
        await catalog.start()
        return catalog

    # lifecycle

    async def start(self, wait: float = CONNECT_WAIT) -> None:
        """Start the session, the watches and the reaper election.

        If ZooKeeper does not answer within `wait`, carry on: calls raise
        BackendUnavailable and kazoo keeps reconnecting in the background.
        """
        self._client.add_listener(self._on_kazoo_state)
        self._client.start_async()
        self._reaper_task = asyncio.create_task(self._reap_loop(), name="zk-reaper")
        self._probe_task = asyncio.create_task(self._probe_loop(), name="zk-probe")
        self._elector = threading.Thread(target=self._elect, name="pilotfish-zk-election",
                                         daemon=True)
        self._elector.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._in_sync.wait(), wait)
        if not self._synced:
            log.warning("ZooKeeper at %s not reachable yet; retrying in the background",
                        ",".join(self.hosts))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        lock = self._lock
        if lock is not None:
            lock.cancel()  # wakes an acquire() waiting in the election thread
        await cancel_and_wait(self._reaper_task, self._resync_task, self._probe_task)
        self._snapshots.close()
        self._client.remove_listener(self._on_kazoo_state)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(self._shutdown_client), 15)

    # leases

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        if ttl < self.min_ttl:
            raise InvalidField("ttl", (
                f"must be at least {self.min_ttl}s on this ZooKeeper catalog: with a session "
                f"timeout of {self.session_timeout:g}s a frozen server is noticed only after "
                f"{self.session_timeout * 2 / 3:.1f}s (lower session_timeout in the registry URL)"))
        lease_id = uuid.uuid4().hex
        entry = StoredLease(lease_id, ttl, owner, time.time() + ttl)
        lease = entry.value()
        create = functools.partial(self._client.create_async, self._lease_path(lease_id),
                                   entry.encode(compact=True))
        try:
            await self._call(create, functools.partial(self._created, entry))
        except NodeExistsError:
            pass  # our own create, retried after a connection loss (the id is a fresh uuid)
        return lease

    async def _keepalive(self, lease_id: str) -> Lease:
        renewed = await retry_on_conflict(
            lambda attempt: self._renew(lease_id, fresh=attempt > 0),
            lambda: self._contention("keepalive", lease_id))
        return renewed.value()

    async def _renew(self, lease_id: str, fresh: bool) -> StoredLease:
        """One versioned write of a later expiry; Conflict when renewed elsewhere meanwhile."""
        entry = await self._live_lease(lease_id, fresh)
        renewed = StoredLease(lease_id, entry.ttl, entry.owner, time.time() + entry.ttl,
                              entry.version + 1)
        write = functools.partial(self._client.set_async, self._lease_path(lease_id),
                                  renewed.encode(compact=True), entry.version)
        try:
            await self._call(write, functools.partial(self._renewed, renewed))
        except NoNodeError:
            raise UnknownLease(lease_id) from None
        except BadVersionError:
            raise Conflict(lease_id) from None
        return renewed

    def _created(self, entry: StoredLease, result: Any) -> None:
        if result.successful():
            self._put_lease(entry.id, entry)

    def _renewed(self, renewed: StoredLease, result: Any) -> None:
        """Put our own renewal in the cache (in answer order), or drop a lease found gone."""
        if result.successful():
            renewed.version, renewed.revision = result.value.version, result.value.mzxid
            self._put_lease(renewed.id, renewed)
        elif isinstance(result.exception, NoNodeError):
            self._drop_lease(renewed.id)

    async def _revoke(self, lease_id: str) -> bool:
        entry = await self._read_lease(lease_id)
        if entry is None:
            return False
        removed = await self._remove_lease(lease_id, version=-1)
        return removed and entry.expires_at > time.time()

    # instances

    async def _register(self, instance: Instance) -> bool:
        data = _encode(instance.to_dict())
        path = self._instance_path(instance.id)
        marker = self._marker_path(instance.lease, instance.id)
        fresh = False
        skip_old_marker = False
        for _ in range(WRITE_ATTEMPTS):
            lease = await self._live_lease(instance.lease, fresh)
            current = await self._current_instance(instance.id, fresh)
            ops: list[Op] = [("check", self._lease_path(instance.lease), lease.version)]
            same = current is not None and current.instance == instance
            if current is None:
                ops += [("create", path, data), ("create", marker, b"")]
            else:
                if same:
                    ops.append(("check", path, current.version))
                else:
                    ops.append(("set", path, data, current.version))
                old_lease = current.instance.lease
                if old_lease != instance.lease:
                    if not skip_old_marker:
                        ops.append(("delete", self._marker_path(old_lease, instance.id), -1))
                    ops.append(("create", marker, b""))
            was_served = current is not None and self._is_live(current.instance.lease)
            failed = await self._multi(ops, functools.partial(self._registered, instance, same))
            if failed is None:
                return not was_served
            index, error = failed
            if index == 0 and isinstance(error, NoNodeError):
                self._drop_lease(instance.lease)
                raise UnknownLease(instance.lease)
            if ops[index][0] == "delete" and isinstance(error, NoNodeError):
                skip_old_marker = True  # the old lease is gone already
            fresh = True  # somebody else wrote meanwhile: read both again and retry
        raise self._contention("register", instance.id)

    def _registered(self, instance: Instance, same: bool, results: list[Any]) -> None:
        """Put our own write in the cache, in answer order (unchanged: nothing to do)."""
        if same:
            return
        stat = results[1] if isinstance(results[1], ZnodeStat) else None
        version, mzxid = (stat.version, stat.mzxid) if stat is not None else (0, 0)
        self._put_instance(instance.id, _InstanceEntry(instance, version, mzxid))

    async def _deregister(self, instance_id: str) -> Instance | None:
        path = self._instance_path(instance_id)
        fresh = instance_id not in self._instances
        skip_marker = False
        for _ in range(WRITE_ATTEMPTS):
            current = await self._current_instance(instance_id, fresh)
            if current is None:
                return None
            ops: list[Op] = [("delete", path, current.version)]
            if not skip_marker:
                ops.append(("delete", self._marker_path(current.instance.lease, instance_id), -1))
            failed = await self._multi(ops, lambda _: self._drop_instance(instance_id))
            if failed is None:
                return current.instance if self._is_live(current.instance.lease) else None
            index, error = failed
            if index == 1 and isinstance(error, NoNodeError):
                skip_marker = True
            fresh = True
        raise self._contention("deregister", instance_id)

    # config entries: one znode each under <root>/config; version = znode version + 1

    def _entry_path(self, name: str) -> str:
        return f"{self.root}/config/{name}"

    async def _config_entry(self, name: str) -> ConfigEntry:
        path = self._entry_path(name)
        try:
            data, stat = await self._call(lambda: self._client.get_async(path))
        except NoNodeError:
            return ConfigEntry(name)
        return decode_entry(name, data, stat.version + 1)

    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        path = self._entry_path(name)
        try:
            if version == 0:
                await self._call(lambda: self._client.create_async(path, data, makepath=True))
                return decode_entry(name, data, 1)
            stat = await self._call(lambda: self._client.set_async(path, data, version - 1))
        except (NodeExistsError, NoNodeError, BadVersionError):
            raise EntryConflict(name, version) from None
        return decode_entry(name, data, stat.version + 1)
