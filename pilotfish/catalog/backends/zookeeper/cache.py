"""The ZooKeeper catalog's local cache, fed by watches and re-read after every reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterable
from typing import Any

from kazoo.client import KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType

from pilotfish.catalog.backends.stored import StoredLease
from pilotfish.catalog.backends.zookeeper.bridge import ZooKeeperSession
from pilotfish.catalog.backends.zookeeper.nodes import (
    INSTANCES,
    LEASES,
    _decode_instance,
    _decode_lease,
    _ignore_result,
    _InstanceEntry,
    log,
)
from pilotfish.catalog.interface import BackendUnavailable, Snapshot, UnknownLease


class ZooKeeperCache(ZooKeeperSession):
    """Leases and instances as the watches last reported them; snapshots come from here."""

    async def healthy(self) -> bool:
        """Connected, with the cache following ZooKeeper and proven current recently."""
        return (self._synced and self._connected.is_set()
                and self.freshness.age() <= self._read_grace)

    @property
    def lease_count(self) -> int:
        """Live leases known to this process's cache."""
        return sum(1 for entry in self._leases.values() if self._alive(entry))

    # reads

    async def snapshot(self) -> Snapshot:
        self._check_readable()
        return self._snapshots.build(
            (entry.instance for entry in self._instances.values()), self._expiry_of)

    def _check_readable(self) -> None:
        if self._closed:
            raise BackendUnavailable("catalog is closed")
        if not self._loaded:
            raise BackendUnavailable(f"ZooKeeper at {','.join(self.hosts)} not reached yet")
        if self._down_since is not None and time.monotonic() - self._down_since > (
            self._read_grace
        ):
            raise BackendUnavailable(self._down_message())
        silent = self.freshness.age()
        if silent > self._read_grace:
            raise BackendUnavailable(
                f"ZooKeeper at {','.join(self.hosts)} has not answered a sync for {silent:.1f}s "
                "(server frozen, overloaded or without a leader)")

    def _is_live(self, lease_id: str) -> bool:
        entry = self._leases.get(lease_id)
        return entry is not None and self._alive(entry)

    def _alive(self, entry: StoredLease) -> bool:
        """Whether a lease may be served: by its expiry, on a clock that stops while this
        reader has no proof that its cache is current."""
        return self.freshness.alive(entry.expires_at)

    # the cache (loop thread only)

    def _put_lease(self, lease_id: str, entry: StoredLease) -> None:
        old = self._leases.get(lease_id)
        if old is not None and entry.revision and old.revision > entry.revision:
            return
        self._leases[lease_id] = entry
        if self._by_lease.get(lease_id) and (old is None or self._alive(old) != self._alive(entry)):
            self._changed()

    def _drop_lease(self, lease_id: str) -> None:
        self._watched.discard(self._lease_path(lease_id))
        entry = self._leases.pop(lease_id, None)
        if entry is None:
            return
        if not self._alive(entry):
            self.expirations += 1
        elif self._by_lease.get(lease_id):
            self._changed()

    def _put_instance(self, instance_id: str, entry: _InstanceEntry) -> None:
        old = self._instances.get(instance_id)
        if old is not None and entry.mzxid and old.mzxid > entry.mzxid:
            return
        self._instances[instance_id] = entry
        lease_id = entry.instance.lease
        if old is not None and old.instance.lease != lease_id:
            self._unlink(old.instance.lease, instance_id)
        self._by_lease.setdefault(lease_id, set()).add(instance_id)
        if old is None or old.instance != entry.instance:
            self._changed()

    def _drop_instance(self, instance_id: str) -> None:
        self._watched.discard(self._instance_path(instance_id))
        self._orphan_since.pop(instance_id, None)
        old = self._instances.pop(instance_id, None)
        if old is not None:
            self._unlink(old.instance.lease, instance_id)
            self._changed()

    def _unlink(self, lease_id: str, instance_id: str) -> None:
        ids = self._by_lease.get(lease_id)
        if ids is not None:
            ids.discard(instance_id)
            if not ids:
                del self._by_lease[lease_id]

    def _apply_node(self, path: str, result: Any) -> None:
        """A read of one lease or instance node, in answer order."""
        kind, _, name = path[len(self.root) + 1:].partition("/")
        if result.successful():
            raw, stat = result.value
            if kind == LEASES:
                lease = _decode_lease(name, raw, stat)
                if lease is None:
                    log.warning("ignoring lease node %s: not a pilotfish lease", path)
                    self._drop_lease(name)
                else:
                    self._put_lease(name, lease)
            else:
                instance = _decode_instance(raw, stat)
                if instance is None or instance.instance.id != name:
                    log.warning("ignoring instance node %s: not a pilotfish instance", path)
                    self._drop_instance(name)
                else:
                    self._put_instance(name, instance)
        elif isinstance(result.exception, NoNodeError):
            if kind == LEASES:
                self._drop_lease(name)
            else:
                self._drop_instance(name)
        else:
            self._watched.discard(path)  # no watch was set; the next resync reads it again

    def _apply_listing(self, kind: str, names: Iterable[str], refetch_all: bool,
                       fetches: list[asyncio.Future[Any]]) -> None:
        """The children of leases/ or instances/: drop what went, read what is new."""
        present = set(names)
        cache: dict[str, Any] = self._leases if kind == LEASES else self._instances
        for gone in [name for name in cache if name not in present]:
            if kind == LEASES:
                self._drop_lease(gone)
            else:
                self._drop_instance(gone)
        for name in present:
            path = f"{self.root}/{kind}/{name}"
            if refetch_all or path not in self._watched:
                fetches.append(self._fetch(path))

    def _fetch(self, path: str) -> asyncio.Future[Any]:
        """Read a node and leave a data watch on it; the answer lands in the cache."""
        self._watched.add(path)
        return self._issue(lambda: self._client.get_async(path, watch=self._on_node_event),
                           lambda result: self._apply_node(path, result))

    def _list(self, kind: str, refetch_all: bool) -> asyncio.Future[list[asyncio.Future[Any]]]:
        """List a directory with a children watch; resolves to the node reads it started."""
        fetches: list[asyncio.Future[Any]] = []
        done: asyncio.Future[list[asyncio.Future[Any]]] = self._loop.create_future()

        def apply(result: Any) -> None:
            if result.successful():
                self._apply_listing(kind, result.value, refetch_all, fetches)
            if not done.done():
                if result.successful():
                    done.set_result(fetches)
                else:
                    done.set_exception(result.exception)

        path = f"{self.root}/{kind}"
        self._issue(lambda: self._client.get_children_async(path, watch=self._on_children_event),
                    apply)
        return done

    # watches (kazoo's threads: hop to the loop)

    def _on_node_event(self, event: Any) -> None:
        if event.type != EventType.NONE:  # NONE: the connection dropped; a resync follows
            self._post(self._refetch, event.path)

    def _on_children_event(self, event: Any) -> None:
        if event.type != EventType.NONE:
            self._post(self._relist, event.path.rsplit("/", 1)[-1])

    def _refetch(self, path: str) -> None:
        self._watched.discard(path)
        if self._connected.is_set():
            self._fetch(path)

    def _relist(self, kind: str) -> None:
        if self._connected.is_set():
            self._list(kind, refetch_all=False).add_done_callback(_ignore_result)

    def _on_kazoo_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._session_lost.set()
        self._post(self._on_state, state)

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            client_id = self._client.client_id
            session_id = client_id[0] if client_id else None
            if self._loaded:
                self.reconnects += 1
            if session_id != self._session_id:
                self.sessions += 1
                self._session_id = session_id
            log.info("ZooKeeper session %x on %s connected", session_id or 0,
                     ",".join(self.hosts))
            self._connected.set()
            if self._resync_task is not None:
                self._resync_task.cancel()
            self._resync_task = asyncio.create_task(self._resync(), name="zk-resync")
            return
        log.warning("ZooKeeper connection %s (%s)",
                    "lost; session expired" if state == KazooState.LOST else "suspended",
                    ",".join(self.hosts))
        self._connected.clear()
        self._synced = False
        self._in_sync.clear()
        if self._resync_task is not None:
            self._resync_task.cancel()
            self._resync_task = None
        if self._down_since is None:
            self._down_since = time.monotonic()
            # wake watchers when reads start failing, so views go stale on time
            self._loop.call_later(self._read_grace + 0.01, self.changes.notify)

    async def _resync(self) -> None:
        """After every (re)connect: set the watches again and re-read everything."""
        while self._connected.is_set() and not self._closed:
            started = time.monotonic()
            try:
                for path in (self.root, f"{self.root}/{LEASES}", f"{self.root}/{INSTANCES}"):
                    with contextlib.suppress(NodeExistsError):
                        await self._call(functools.partial(self._client.create_async, path, b"",
                                                           makepath=True))
                self._watched.clear()
                # asyncio.timeout, not 3.11's wait_for: that can swallow the cancel of close()
                async with asyncio.timeout(self._op_timeout):
                    listings = await asyncio.gather(self._list(LEASES, True),
                                                    self._list(INSTANCES, True))
                reads = [fetch for listing in listings for fetch in listing]
                async with asyncio.timeout(self._op_timeout * 3):
                    results = await asyncio.gather(*reads)
                if any(not r.successful() and not isinstance(r.exception, NoNodeError)
                       for r in results):
                    raise BackendUnavailable("reads failed during resync")
            except (BackendUnavailable, KazooException, TimeoutError) as exc:
                log.info("ZooKeeper resync failed, retrying: %s", exc)
                await asyncio.sleep(0.2)
                continue
            self._loaded = True
            self._synced = True
            self.freshness.proved(started)
            self._in_sync.set()
            self._down_since = None
            self.changes.notify()
            log.info("ZooKeeper cache in sync: %d leases, %d instances",
                     len(self._leases), len(self._instances))
            return

    async def _read_lease(self, lease_id: str) -> StoredLease | None:
        node = await self._read_node(self._lease_path(lease_id))
        return None if node is None else _decode_lease(lease_id, *node)

    async def _live_lease(self, lease_id: str, fresh: bool) -> StoredLease:
        """The lease as cached, or as read when the cache may be behind; UnknownLease if dead."""
        # By the wall clock, not the reader's paused one: a lease that ran out during an
        # outage is not renewed but replaced (the registrar registers again at once).
        entry = None if fresh else self._leases.get(lease_id)
        if entry is None or entry.expires_at <= time.time():
            entry = await self._read_lease(lease_id)
        if entry is None or entry.expires_at <= time.time():
            raise UnknownLease(lease_id)
        return entry

    async def _current_instance(self, instance_id: str, fresh: bool) -> _InstanceEntry | None:
        if not fresh:
            return self._instances.get(instance_id)
        node = await self._read_node(self._instance_path(instance_id))
        return None if node is None else _decode_instance(*node)

    async def _read_node(self, path: str) -> tuple[bytes, Any] | None:
        """Read a node (data and stat), updating the cache with it; None if it is absent."""
        try:
            node: tuple[bytes, Any] = await self._call(
                lambda: self._client.get_async(path),
                lambda result: self._apply_node(path, result))
        except NoNodeError:
            return None
        return node
