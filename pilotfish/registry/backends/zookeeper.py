"""ZooKeeper backend: leases and instances as znodes, a watch-fed local cache, an elected reaper.

Layout under the chroot (every node persistent; data is JSON):

    <chroot>/leases/<lease-id>                  {"ttl", "owner", "expires_at"}
    <chroot>/leases/<lease-id>/<instance-id>    empty marker: this instance rides on the lease
    <chroot>/instances/<instance-id>            Instance.to_dict()
    <chroot>/reaper/                            kazoo Lock recipe: the process that reaps

Instances live under `instances/<id>`, not `services/<service>/<id>`, because the catalog
is keyed by instance id: ZooKeeper itself then keeps ids unique (a create on a taken id
fails), moving an instance to another service is one `setData`, and deregister needs
only the id. The service is in the JSON.

ZooKeeper has no TTL on nodes, so expiry is explicit. A keepalive rewrites the lease's
`expires_at` (one versioned `setData`); every reader filters instances by their lease's
expiry on its own clock and wakes watchers exactly at expiry; one process, elected with
the Lock recipe, deletes lapsed leases together with their instances. Every write that
touches an instance is a multi-op that checks the lease node's version, and every lease
removal deletes the lease's marker children in the same multi, so nothing lands on a dead
lease: ZooKeeper refuses to delete a lease node that gained a marker meanwhile.

kazoo is threaded. Its answers are applied to the cache on the event loop, in the order
ZooKeeper answered them (one session answers in order), so the cache never goes backwards.

Connection loss: kazoo drops every watch when the connection drops, so after each reconnect
(same session or a new one after expiry) the catalog lists both directories again with
fresh watches and re-reads every node. Nothing pilotfish stores is ephemeral, so an expired
session loses no lease or instance; the reaper lock is ephemeral and is taken again (the
Lock recipe finds its own node by a uuid prefix when a create's answer was lost). A create
retried after a lost answer can meet its own node (NodeExists): a lease id is a fresh uuid,
so that lease is ours; an instance create falls back to reading the node and updating it.
Calls wait out a blip up to READ_GRACE (reads meanwhile come from the cache), then fail
fast with BackendUnavailable until the session is back and the cache re-read.

A frozen server keeps the connection open and stops answering: a `sync` through the
leader every PROBE_EVERY proves the cache current, expiry runs only while it does
(`Freshness`, docs/faults.md), and the session timeout (2 s) makes kazoo leave a frozen
server after 1.33 s; TTLs it cannot honour are refused (`min_ttl`).

URL: zk://host[:port][,host[:port]...][/chroot][?session_timeout=6&timeout=3]
(chroot defaults to /pilotfish; timeouts in seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    LockTimeout,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.protocol.states import EventType, ZnodeStat
from kazoo.retry import KazooRetry
from kazoo.security import READ_ACL_UNSAFE, make_digest_acl

from pilotfish.config import parse_endpoints
from pilotfish.loop import cancel_and_wait
from pilotfish.registry.backends.stored import (
    WRITE_ATTEMPTS,
    CachedCatalog,
    Conflict,
    StoredLease,
    retry_on_conflict,
)
from pilotfish.registry.catalog import BackendUnavailable, Snapshot, UnknownLease
from pilotfish.registry.credentials import split_credentials
from pilotfish.registry.model import Instance, InvalidField, Lease

log = logging.getLogger(__name__)

DEFAULT_CHROOT = "/pilotfish"
SESSION_TIMEOUT = 2.0  # seconds; ZooKeeper clamps it to its min/maxSessionTimeout (2..20 ticks)
FAILOVER_MARGIN = 0.6  # reconnecting to another server and retrying the write, after kazoo's
# read timeout (2/3 of the session timeout) noticed a frozen one
PROBE_EVERY = 0.25  # a sync through the leader this often proves the cache current
OP_TIMEOUT = 3.0  # longest a catalog call waits for ZooKeeper (including a reconnect)
READ_GRACE = 2.0  # reads keep serving the cache for this long into a disconnection
CONNECT_WAIT = 5.0  # from_url waits this long for the first connection, then goes on
REAP_INTERVAL = 0.5
REAP_MARGIN = 0.5  # reap a lease this long after it lapsed (readers filter it already)
ORPHAN_GRACE = 10.0  # an instance whose lease node is missing this long is deleted
ELECTION_WAIT = 5.0
TXN_BATCH = 400  # instances removed per multi, far below ZooKeeper's 1 MB request limit

CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionDropped,
                     OperationTimeoutError)
LEASES = "leases"
INSTANCES = "instances"

Op = tuple[Any, ...]  # ("check", path, version) | ("create", path, data) | ("set", ...) | ...


@dataclass(slots=True)
class _InstanceEntry:
    instance: Instance
    version: int
    mzxid: int


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _decode_lease(lease_id: str, raw: bytes, stat: ZnodeStat) -> StoredLease | None:
    return StoredLease.parse(lease_id, raw, stat.version, stat.mzxid)


def _decode_instance(raw: bytes, stat: ZnodeStat) -> _InstanceEntry | None:
    try:
        return _InstanceEntry(Instance.from_dict(json.loads(raw)), stat.version, stat.mzxid)
    except (ValueError, KeyError, TypeError):
        return None


def _failure(results: list[Any]) -> tuple[int, Exception] | None:
    """The op that made a multi fail, or None when it committed."""
    for index, result in enumerate(results):
        if isinstance(result, Exception) and not isinstance(
            result, RolledBackError | RuntimeInconsistency
        ):
            return index, result
    return None


def min_ttl(session_timeout: float) -> int:
    """The smallest TTL a session timeout can honour: kazoo notices a frozen server after 2/3
    of it, then reconnects elsewhere and retries the keepalive, all before the lease lapses."""
    return max(2, math.ceil(session_timeout * 2 / 3 + FAILOVER_MARGIN))


def parse_zk_url(url: str) -> tuple[list[str], str, dict[str, float]]:
    """Split zk://h1:2181,h2:2181/chroot?session_timeout=6&timeout=3 into its parts."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "zk":
        raise ValueError(f"registry URL {url!r}: expected zk://host:port[,host:port]/chroot")
    hosts = [str(e) for e in parse_endpoints(parts.netloc, 2181, f"registry URL {url!r}")]
    chroot = parts.path.rstrip("/") or DEFAULT_CHROOT
    segments = chroot.split("/")[1:]
    if any(s in ("", ".", "..") or not s.isprintable() for s in segments) or (
        segments[0] == "zookeeper"
    ):
        raise ValueError(f"registry URL {url!r}: bad chroot {chroot!r}")
    options: dict[str, float] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in ("session_timeout", "timeout"):
            raise ValueError(f"registry URL {url!r}: unknown option {key!r} "
                             "(known: session_timeout, timeout)")
        try:
            value = float(values[-1])
        except ValueError:
            raise ValueError(f"registry URL {url!r}: {key} must be seconds") from None
        if not 0 < value <= 600:
            raise ValueError(f"registry URL {url!r}: {key} out of range")
        options[key] = value
    return hosts, chroot, options


class ZooKeeperCatalog(CachedCatalog):
    """The catalog on a ZooKeeper ensemble: `zk://h1:2181[,h2:2181...]/chroot`."""

    def __init__(self, hosts: list[str], root: str, session_timeout: float = SESSION_TIMEOUT,
                 op_timeout: float = OP_TIMEOUT, read_grace: float = READ_GRACE,
                 credentials: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.hosts = hosts
        self.root = root
        self._op_timeout = op_timeout
        self._read_grace = read_grace
        self.session_timeout = session_timeout
        self.min_ttl = min_ttl(session_timeout)
        self._client = KazooClient(
            hosts=",".join(hosts), timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_jitter=0.1,
                                        max_delay=0.25),
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=0.5, deadline=2.0),
            # digest auth: what this catalog creates, only that user may change; all may read
            auth_data=[("digest", ":".join(credentials))] if credentials else None,
            default_acl=[make_digest_acl(*credentials, all=True), READ_ACL_UNSAFE[0]]
            if credentials else None,
        )
        self._loop = asyncio.get_running_loop()
        self._closed = False
        # the cache, touched only on the loop
        self._instances: dict[str, _InstanceEntry] = {}
        self._by_lease: dict[str, set[str]] = {}
        self._watched: set[str] = set()  # nodes with a data watch set (or a read on its way)
        self._orphan_since: dict[str, float] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._stale_reported = False
        # connection state
        self._connected = asyncio.Event()
        self._loaded = False  # a full listing has been read at least once
        self._synced = False  # the cache follows ZooKeeper now (watches set after a resync)
        self._in_sync = asyncio.Event()  # set while _synced
        self._down_since: float | None = time.monotonic()
        self._resync_task: asyncio.Task[None] | None = None
        self.sessions = 0  # sessions established (a new one after each expiry)
        self.reconnects = 0  # connections re-established after a drop, for health and tests
        self._session_id: int | None = None
        # reaping
        self._leader = False
        self.reaped = 0  # leases this process deleted as the elected reaper
        self._reaper_task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._session_lost = threading.Event()
        self._elector: threading.Thread | None = None
        self._lock: Any = None  # the kazoo Lock being acquired or held

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> ZooKeeperCatalog:
        """Connect to the ensemble a zk:// URL names (waiting a few seconds for it)."""
        url, credentials = split_credentials(url)
        hosts, root, options = parse_zk_url(url)
        catalog = cls(hosts, root, session_timeout=options.get("session_timeout",
                                                                SESSION_TIMEOUT),
                      op_timeout=options.get("timeout", OP_TIMEOUT), credentials=credentials)
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

    def _shutdown_client(self) -> None:
        # Closing the session deletes the lock node at once and fails whatever call the
        # election thread is blocked in, so it ends promptly.
        self._client.stop()
        if self._elector is not None:
            self._elector.join(ELECTION_WAIT + 1)
        self._client.close()

    async def healthy(self) -> bool:
        """Connected, with the cache following ZooKeeper and proven current recently."""
        return (self._synced and self._connected.is_set()
                and self.freshness.age() <= self._read_grace)

    @property
    def lease_count(self) -> int:
        """Live leases known to this process's cache."""
        return sum(1 for entry in self._leases.values() if self._alive(entry))

    @property
    def leader(self) -> bool:
        """Whether this process currently holds the reaper lock."""
        return self._leader

    # paths

    def _lease_path(self, lease_id: str) -> str:
        return f"{self.root}/{LEASES}/{lease_id}"

    def _marker_path(self, lease_id: str, instance_id: str) -> str:
        return f"{self.root}/{LEASES}/{lease_id}/{instance_id}"

    def _instance_path(self, instance_id: str) -> str:
        return f"{self.root}/{INSTANCES}/{instance_id}"

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

            def apply(results: list[Any], current: _InstanceEntry | None = current,
                      same: bool = same) -> None:
                if same and current is not None:
                    return
                stat = results[1] if isinstance(results[1], ZnodeStat) else None
                version, mzxid = (stat.version, stat.mzxid) if stat is not None else (0, 0)
                self._put_instance(instance.id, _InstanceEntry(instance, version, mzxid))

            failed = await self._multi(ops, apply)
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

    def _down_message(self) -> str:
        since = time.monotonic() - (self._down_since or time.monotonic())
        return f"ZooKeeper at {','.join(self.hosts)} unreachable for {since:.1f}s"

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
                listings = await asyncio.wait_for(
                    asyncio.gather(self._list(LEASES, True), self._list(INSTANCES, True)),
                    self._op_timeout)
                reads = [fetch for listing in listings for fetch in listing]
                results = await asyncio.wait_for(asyncio.gather(*reads), self._op_timeout * 3)
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

    # talking to kazoo

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run callback on the loop (from any thread); answers keep their order."""
        if self._closed and self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone
            self._loop.call_soon_threadsafe(callback, *args)

    def _issue(self, start: Callable[[], Any],
               apply: Callable[[Any], None] | None = None) -> asyncio.Future[Any]:
        """Send one request; `apply` sees the answer on the loop, then the future resolves."""
        future: asyncio.Future[Any] = self._loop.create_future()

        def settle(result: Any) -> None:
            if apply is not None:
                try:
                    apply(result)
                except Exception:
                    log.exception("applying a ZooKeeper answer failed")
            if not future.done():
                future.set_result(result)

        start().rawlink(lambda result: self._post(settle, result))
        return future

    async def _call(self, start: Callable[[], Any],
                    apply: Callable[[Any], None] | None = None) -> Any:
        """One request, retried across a reconnect within the op timeout; returns its value."""
        deadline = time.monotonic() + self._op_timeout
        while True:
            await self._until_connected(deadline)
            future = self._issue(start, apply)
            try:
                result = await asyncio.wait_for(future, max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise BackendUnavailable(
                    f"ZooKeeper at {','.join(self.hosts)} did not answer within "
                    f"{self._op_timeout:g}s") from None
            if result.successful():
                return result.value
            error = result.exception
            if not isinstance(error, CONNECTION_ERRORS):
                raise error
            if time.monotonic() >= deadline or self._closed:
                raise BackendUnavailable(
                    f"ZooKeeper at {','.join(self.hosts)}: {type(error).__name__}") from error

    async def _until_connected(self, deadline: float) -> None:
        if self._closed:
            raise BackendUnavailable("catalog is closed")
        if self._client.connected and self._connected.is_set():
            return
        now = time.monotonic()
        down_since = now if self._down_since is None else self._down_since
        # Wait out a short blip (a reconnect, an election); fail fast during an outage.
        limit = min(deadline, down_since + self._read_grace)
        if limit <= now:
            raise BackendUnavailable(self._down_message())
        try:
            await asyncio.wait_for(self._connected.wait(), limit - now)
        except TimeoutError:
            raise BackendUnavailable(self._down_message()) from None

    async def _multi(
        self, ops: list[Op], apply: Callable[[list[Any]], None] | None = None
    ) -> tuple[int, Exception] | None:
        """Commit ops atomically; None when committed, else the failing op and its error."""

        def start() -> Any:
            txn = self._client.transaction()
            for op in ops:
                if op[0] == "check":
                    txn.check(op[1], op[2])
                elif op[0] == "create":
                    txn.create(op[1], op[2])
                elif op[0] == "set":
                    txn.set_data(op[1], op[2], op[3])
                else:
                    txn.delete(op[1], op[2])
            return txn.commit_async()

        def on_answer(result: Any) -> None:
            if apply is not None and result.successful() and _failure(result.value) is None:
                apply(result.value)

        results: list[Any] = await self._call(start, on_answer)
        return _failure(results)

    async def _read_node(self, path: str) -> tuple[bytes, Any] | None:
        """Read a node (data and stat), updating the cache with it; None if it is absent."""
        try:
            node: tuple[bytes, Any] = await self._call(
                lambda: self._client.get_async(path),
                lambda result: self._apply_node(path, result))
        except NoNodeError:
            return None
        return node

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

                def apply(_: list[Any], batch: list[str] = batch, last: bool = last) -> None:
                    for name in batch:
                        entry = self._instances.get(name)
                        if entry is not None and entry.instance.lease == lease_id:
                            self._drop_instance(name)
                    if last:
                        self._drop_lease(lease_id)

                failed = await self._multi(ops, apply)
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

    def _contention(self, what: str, name: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"{what} {name!r}: ZooKeeper kept changing underneath, gave up after "
            f"{WRITE_ATTEMPTS} attempts")

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
                asked = time.monotonic()

                def proved(result: Any, asked: float = asked) -> None:
                    if result.successful() and self._synced:
                        self.freshness.proved(asked)

                probe = self._issue(lambda: self._client.sync_async(self.root), proved)
            self._report_staleness()

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


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # consumed: failures here are retried by the next event or resync
