"""The etcd backend: pilotfish leases are etcd leases, instances are JSON keys on them.

Keys under the URL's prefix (default `pilotfish`):

    /<prefix>/leases/<lease>            {"ttl": n, "owner": s}     attached to the lease
    /<prefix>/services/<service>/<id>   the instance as JSON       attached to its lease
    /<prefix>/ids/<id>                  the instance's service     attached to its lease

The `ids/` key indexes instances by id, because the catalog is keyed by id while the
layout (readable with `etcdctl get --prefix /pilotfish/services/web`) is keyed by service:
register and deregister compare it in a transaction, so an instance re-registered under
another service moves atomically and deregister needs only the id. Lease ids are etcd's
int64 lease ids in hex, as etcdctl prints them.

Reads come from a local cache fed by one watch on the prefix, resumed from the last
revision seen (re-listed after compaction) on another member when one goes away.
`snapshot()` raises BackendUnavailable once the watch has been down for longer than a
short grace, so API reads answer 503 while DNS/LB views fail static. A member that is
frozen or slow keeps its stream open and simply stops talking, so the watch checks its
member every PROGRESS_EVERY (a progress request, and a linearizable read whose revision
the watch must reach) and moves on after STALL_AFTER without an answer; expiry runs only
while those checks prove the cache current (`Freshness`, docs/faults.md).

etcd keeps leases across a restart or a leader change (it extends each by its TTL), so a
lease whose keepalives failed for longer than its TTL during an outage would come back
to life. This catalog remembers the expiry of the leases it granted or renewed; when such
a lease ran out while etcd was unreachable, keepalive answers UnknownLease (the registrar
re-registers) and the lease is revoked once etcd is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import aetcd
import grpc
from aetcd import rpc

from pilotfish.config import ConfigError, parse_endpoints
from pilotfish.loop import cancel_and_wait
from pilotfish.registry.backends.stored import WRITE_ATTEMPTS, CachedCatalog, StoredLease
from pilotfish.registry.catalog import BackendUnavailable, Snapshot, UnknownLease
from pilotfish.registry.credentials import split_credentials
from pilotfish.registry.expiring import Freshness
from pilotfish.registry.model import (
    Instance,
    Lease,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
CALL_TIMEOUT = 1.5  # one attempt on one member
DEADLINE = 4.0  # one catalog call, across retries and members (the API gives up at 5 s)
STALE_GRACE = 1.0  # how long reads are served from the cache while the watch reconnects
PROGRESS_EVERY = 0.25  # a progress request on the watch stream this often...
STALL_AFTER = 1.0  # ...and a member that leaves one unanswered this long is frozen or cut off
MIN_KEEPALIVE_TIMEOUT = 0.3
REVOKE_LAPSED_AFTER = 2.0  # the registrar moves the instances to a new lease meanwhile
LAPSE_SLACK = 0.5  # an expiry key deleted this close before its time still counts as lapsed
OUTAGE_MEMORY = 32  # past outages remembered for the lapsed-lease check

GRPC_OPTIONS: dict[str, Any] = {
    # Notice a silently dead member; etcd refuses pings closer than 5 s apart.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 3_000,
    # Reconnect quickly when a member comes back (gRPC's default backoff reaches 120 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}
WATCH_METADATA = (("hasleader", "true"),)  # a member cut off from the leader ends the watch


@dataclass(slots=True)
class _Held:
    """A lease this catalog granted or renewed, and when it runs out by our own clock."""

    ttl: int
    expires: float  # time.monotonic()


class _Member:
    """One etcd endpoint and its gRPC channel (created lazily, reconnected by gRPC)."""

    def __init__(self, host: str, port: int) -> None:
        self.endpoint = f"{host}:{port}"
        self.client = aetcd.Client(host=host, port=port, options=GRPC_OPTIONS)
        self._watch_stub: Any = None

    async def kv(self) -> Any:
        await self.client.connect()
        return self.client.kvstub

    async def leases(self) -> Any:
        await self.client.connect()
        return self.client.leasestub

    async def watches(self) -> Any:
        await self.client.connect()
        if self._watch_stub is None:
            self._watch_stub = rpc.WatchStub(self.client.channel)
        return self._watch_stub

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        self._watch_stub = None


class _WatchEnded(Exception):
    """The server ended the watch (cancelled, lost its leader, or the stream closed)."""


class _Compacted(Exception):
    """The revision to resume from was compacted away: list everything again."""


def parse_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, list[str]]]:
    """Split etcd://h1:2379,h2:2379/prefix into endpoints, prefix and query options."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "etcd":
        raise ValueError(f"registry URL {url!r}: expected etcd://")
    endpoints = [(f"[{e.host}]" if ":" in e.host else e.host, e.port)
                 for e in parse_endpoints(parts.netloc, DEFAULT_PORT, f"registry URL {url!r}")]
    prefix = parts.path.strip("/") or "pilotfish"
    if any(not segment for segment in prefix.split("/")):
        raise ValueError(f"registry URL {url!r}: empty segment in prefix {prefix!r}")
    return endpoints, prefix, parse_qs(parts.query)


def _lease_number(lease_id: str) -> int | None:
    """etcd's int64 id for a pilotfish lease id (hex), or None if it cannot be one."""
    try:
        number = int(lease_id, 16)
    except ValueError:
        return None
    return number if 0 < number < 2**63 else None


def keepalive_timeout(ttl: int, call_timeout: float) -> float:
    """One keepalive attempt's timeout: short enough that, a frozen member given up on, the
    next member renews the lease before it lapses (ttl/4; unknown ttl: the call timeout)."""
    if ttl <= 0:
        return call_timeout
    return max(MIN_KEEPALIVE_TIMEOUT, min(call_timeout, ttl / 4))


def _prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) cover every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _transient(exc: grpc.aio.AioRpcError) -> bool:
    """Worth another attempt on another member: unreachable, timed out, or a stream that
    broke in gRPC's core (INTERNAL "Internal error from Core", seen when a deadline hits
    while a request is being sent)."""
    return exc.code() in _TRANSIENT or (
        exc.code() == grpc.StatusCode.INTERNAL and "from Core" in (exc.details() or ""))


def _server_answered(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd itself answered (no leader, leader changed, timeout) vs no connection."""
    return (exc.details() or "").startswith("etcdserver:")


_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}


class EtcdCatalog(CachedCatalog):
    """A catalog stored in an etcd cluster, read through a watch-fed local cache."""

    def __init__(self, endpoints: list[tuple[str, int]], prefix: str = "pilotfish",
                 call_timeout: float = CALL_TIMEOUT, deadline: float = DEADLINE,
                 stale_grace: float = STALE_GRACE, stall_after: float = STALL_AFTER) -> None:
        # Expiry runs only while progress answers prove the cache current (fail static).
        super().__init__(Freshness(bound=min(STALL_AFTER, stall_after)))
        self._members = [_Member(host, port) for host, port in endpoints]
        self._current = 0
        self.prefix = prefix
        self._root = f"/{prefix}/".encode()
        self._call_timeout = call_timeout
        self._deadline = deadline
        self._stale_grace = stale_grace
        self._stall_after = stall_after
        # cache, fed by the watch
        self._instances: dict[str, Instance] = {}
        self._expiry: dict[str, float] = {}  # wall clock, as the last keepalive published it
        self._revision = 0  # the watch resumes after this revision
        self._synced = asyncio.Event()
        self._disconnected_at: float | None = time.monotonic()
        self._watch_error = "not connected yet"
        self._grace_timer: asyncio.TimerHandle | None = None
        # lapse bookkeeping for leases this process keeps alive
        self._held: dict[str, _Held] = {}
        self._lapsed: set[str] = set()
        self._outages: deque[tuple[float, float]] = deque(maxlen=OUTAGE_MEMORY)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stragglers: set[asyncio.Future[Any]] = set()  # cancelled, not yet ended
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> EtcdCatalog:
        """etcd://h1:2379[,h2:2379…]/prefix[?timeout=SECONDS]; starts the watch at once."""
        if split_credentials(url)[1] is not None:  # the stubs are called without aetcd's token
            raise ConfigError("etcd:// with user:password@ is not supported yet: secure etcd "
                              "by its network (see SECURITY.md)")
        endpoints, prefix, query = parse_url(url)
        options: dict[str, float] = {}
        if "timeout" in query:
            options["call_timeout"] = float(query["timeout"][-1])
        catalog = cls(endpoints, prefix, **options)
        await catalog.start()
        return catalog

    async def start(self, wait: float = 3.0) -> None:
        """Begin following the prefix; waits briefly for the first listing but never fails."""
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._follow(), name=f"etcd-watch-{self.prefix}")
        try:
            await asyncio.wait_for(self._synced.wait(), wait)
        except TimeoutError:
            log.warning("etcd %s not reachable yet (%s); serving 503 until it is",
                        self._endpoints(), self._watch_error)

    # leases

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        started = time.monotonic()

        async def grant(member: _Member, timeout: float) -> Any:
            return await (await member.leases()).LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl, ID=0), timeout=timeout)

        granted = await self._call(grant)
        if granted.error:
            raise BackendUnavailable(f"etcd refused a lease: {granted.error}")
        lease_id = format(granted.ID, "x")
        value = StoredLease(lease_id, ttl, owner).encode(expiry=False)
        puts = [rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self._lease_key(lease_id), value=value, lease=granted.ID)),
                rpc.RequestOp(request_put=self._expiry_put(lease_id, granted.ID, granted.TTL))]
        try:
            await self._txn([], puts, [])
        except BaseException:
            # Nothing half-written: a lease without its key is revoked (or lapses by itself).
            self._spawn(self._quiet_revoke(granted.ID))
            raise
        actual = max(ttl, int(granted.TTL))
        self._held[lease_id] = _Held(actual, started + actual)
        return Lease(id=lease_id, ttl=actual, owner=owner, expires_at=time.time() + actual)

    async def _keepalive(self, lease_id: str) -> Lease:
        number = _lease_number(lease_id)
        if number is None:
            raise UnknownLease(lease_id)
        held = self._held.get(lease_id)
        if lease_id in self._lapsed or (held is not None and self._lapsed_in_outage(held)):
            self._mark_lapsed(lease_id)
            raise UnknownLease(lease_id)
        started = time.monotonic()
        # A frozen member must be left well before the lease lapses: a keepalive comes
        # every ttl/3, so one attempt may take at most ttl/4 before the next member is tried.
        ttl_now = held.ttl if held is not None else (self._leases[lease_id].ttl
                                                      if lease_id in self._leases else 0)
        per_call = keepalive_timeout(ttl_now, self._call_timeout)

        async def renew(member: _Member, timeout: float) -> Any:
            stub = await member.leases()
            call = stub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=number)]),
                                       timeout=timeout)
            try:
                async for reply in call:
                    return reply
            finally:
                call.cancel()
            raise _WatchEnded("keepalive stream closed without an answer")

        try:
            reply = await self._call(renew, per_call)
        except _WatchEnded as exc:
            raise BackendUnavailable(f"etcd {exc}") from exc
        if reply.TTL <= 0:
            self._held.pop(lease_id, None)
            raise UnknownLease(lease_id)
        put = self._expiry_put(lease_id, number, reply.TTL)

        async def publish(member: _Member, timeout: float) -> Any:
            return await (await member.kv()).Put(put, timeout=timeout)

        try:
            await self._call(publish, per_call)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # lapsed between the two calls
                raise UnknownLease(lease_id) from exc
            raise self._unavailable(f"keepalive: {exc.details()}") from exc
        ttl = max(2, int(reply.TTL))
        self._held[lease_id] = _Held(ttl, started + ttl)
        info = self._leases.get(lease_id)
        return Lease(id=lease_id, ttl=ttl, owner=info.owner if info else "",
                     expires_at=time.time() + ttl)

    async def _lease(self, lease_id: str) -> Lease | None:
        number = _lease_number(lease_id)
        if number is None or lease_id in self._lapsed:
            return None

        async def ttl_of(member: _Member, timeout: float) -> Any:
            return await (await member.leases()).LeaseTimeToLive(
                rpc.LeaseTimeToLiveRequest(ID=number), timeout=timeout)

        async def key_of(member: _Member, timeout: float) -> Any:
            return await (await member.kv()).Range(
                rpc.RangeRequest(key=self._lease_key(lease_id)), timeout=timeout)

        remaining, stored = await asyncio.gather(self._call(ttl_of), self._call(key_of))
        if remaining.TTL <= 0 or not stored.kvs:
            return None
        info = self._lease_info(lease_id, stored.kvs[0].value)
        ttl = info.ttl if info else max(2, int(remaining.grantedTTL))
        return Lease(id=lease_id, ttl=ttl, owner=info.owner if info else "",
                     expires_at=time.time() + remaining.TTL)

    async def _revoke(self, lease_id: str) -> bool:
        number = _lease_number(lease_id)
        if number is None:
            return False
        was_lapsed = lease_id in self._lapsed

        async def end(member: _Member, timeout: float) -> Any:
            return await (await member.leases()).LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=number), timeout=timeout)

        try:
            await self._call(end)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise self._unavailable(f"revoke: {exc.details()}") from exc
            self._held.pop(lease_id, None)
            return False
        self._held.pop(lease_id, None)
        return not was_lapsed

    # instances

    async def _register(self, instance: Instance) -> bool:
        number = _lease_number(instance.lease)
        if number is None or instance.lease in self._lapsed:
            raise UnknownLease(instance.lease)
        lease_key = self._lease_key(instance.lease)
        id_key = self._id_key(instance.id)
        value = json.dumps(instance.to_dict(), separators=(",", ":")).encode()
        cached = self._instances.get(instance.id)
        old_service = cached.service if cached is not None else None
        for _ in range(WRITE_ATTEMPTS):
            compare = [
                rpc.Compare(key=lease_key, target=rpc.Compare.CREATE,
                            result=rpc.Compare.GREATER, create_revision=0),
                self._id_compare(id_key, old_service),
            ]
            success = [
                rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self._service_key(instance.service, instance.id), value=value,
                    lease=number)),
                rpc.RequestOp(request_put=rpc.PutRequest(
                    key=id_key, value=instance.service.encode(), lease=number)),
            ]
            if old_service is not None and old_service != instance.service:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                    key=self._service_key(old_service, instance.id))))
            failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=lease_key)),
                       rpc.RequestOp(request_range=rpc.RangeRequest(key=id_key))]
            try:
                reply = await self._txn(compare, success, failure)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the lease vanished in between
                    raise UnknownLease(instance.lease) from exc
                raise self._unavailable(f"register: {exc.details()}") from exc
            if reply.succeeded:
                return old_service is None
            if not reply.responses[0].response_range.kvs:
                raise UnknownLease(instance.lease)
            current = reply.responses[1].response_range.kvs
            old_service = current[0].value.decode() if current else None
        raise self._unavailable(f"register {instance.id!r}: kept racing with other writers")

    async def _deregister(self, instance_id: str) -> Instance | None:
        id_key = self._id_key(instance_id)
        cached = self._instances.get(instance_id)
        service = cached.service if cached is not None else None
        for _ in range(WRITE_ATTEMPTS):
            compare = [self._id_compare(id_key, service)]
            failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=id_key))]
            success: list[Any] = []
            if service is not None:
                success = [
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                        key=self._service_key(service, instance_id), prev_kv=True)),
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=id_key)),
                ]
            try:
                reply = await self._txn(compare, success, failure)
            except grpc.aio.AioRpcError as exc:
                raise self._unavailable(f"deregister: {exc.details()}") from exc
            if reply.succeeded:
                if service is None:
                    return None
                removed = reply.responses[0].response_delete_range.prev_kvs
                return self._decode_instance(removed[0].value) if removed else cached
            current = reply.responses[0].response_range.kvs
            if not current:
                return None
            service = current[0].value.decode()
        raise self._unavailable(f"deregister {instance_id!r}: kept racing with other writers")

    # reads

    async def snapshot(self) -> Snapshot:
        if not self._synced.is_set():
            try:
                await asyncio.wait_for(self._synced.wait(), min(2.0, self._deadline))
            except TimeoutError:
                raise self._unavailable(f"no listing yet ({self._watch_error})") from None
        down = self._down_for()
        if down > self._stale_grace:
            raise self._unavailable(f"watch down for {down:.1f}s ({self._watch_error})")
        return self._snapshots.build(self._instances.values(), self._expiry_of)

    def _expiry_of(self, lease_id: str) -> float | None:
        return self._expiry.get(lease_id, math.inf)  # no expiry key: trust etcd to delete

    async def healthy(self) -> bool:
        """Healthy while the watch is connected (or only briefly reconnecting)."""
        return self._synced.is_set() and self._down_for() <= self._stale_grace

    async def close(self) -> None:
        self._closed.set()
        self._snapshots.close()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        await cancel_and_wait(self._watch_task, *self._tasks)
        self._watch_task = None
        for member in self._members:
            await member.close()

    # calls

    async def _call(self, op: Callable[[_Member, float], Awaitable[T]],
                    call_timeout: float | None = None) -> T:
        """Run op on the current member, moving to the next on failure, within the deadline.

        Gives up early when every member refused the connection twice in a row, so a
        stopped server is reported within a fraction of a second rather than at the deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline
        per_call = self._call_timeout if call_timeout is None else call_timeout
        unreachable = 0
        attempt = 0
        while True:
            member = self._members[self._current]
            remaining = deadline - loop.time()
            try:
                return await op(member, max(0.05, min(per_call, remaining)))
            except grpc.aio.AioRpcError as exc:
                if not _transient(exc):
                    raise
                detail = f"{member.endpoint}: {exc.code().name.lower()}: {exc.details()}"
                if _server_answered(exc) or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    unreachable = 0
                else:
                    unreachable += 1
            attempt += 1
            self._rotate(member)
            if unreachable >= 2 * len(self._members) or loop.time() >= deadline:
                raise self._unavailable(detail)
            if attempt % len(self._members) == 0:
                await asyncio.sleep(min(0.05 * attempt, 0.3, max(0.0, deadline - loop.time())))

    async def _txn(self, compare: list[Any], success: list[Any], failure: list[Any]) -> Any:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)

        async def run(member: _Member, timeout: float) -> Any:
            return await (await member.kv()).Txn(request, timeout=timeout)

        return await self._call(run)

    async def _revoke_number(self, number: int) -> None:
        """Revoke an etcd lease; a lease already gone is fine. Raises BackendUnavailable."""
        async def end(member: _Member, timeout: float) -> Any:
            return await (await member.leases()).LeaseRevoke(
                rpc.LeaseRevokeRequest(ID=number), timeout=timeout)

        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._call(end)

    async def _quiet_revoke(self, number: int) -> None:
        with contextlib.suppress(Exception):
            await self._revoke_number(number)

    def _rotate(self, failed: _Member) -> None:
        if self._members[self._current] is failed:
            self._current = (self._current + 1) % len(self._members)

    def _unavailable(self, detail: str) -> BackendUnavailable:
        return BackendUnavailable(f"etcd {self._endpoints()} unreachable: {detail}")

    def _endpoints(self) -> str:
        return ",".join(m.endpoint for m in self._members)

    # the watch

    async def _follow(self) -> None:
        """List once, then watch from the next revision; on failure, the next member."""
        backoff = 0.1
        need_listing = True
        while not self._closed.is_set():
            member = self._members[self._current]
            try:
                if need_listing:
                    await self._relist(member)
                    need_listing = False
                    backoff = 0.1
                await self._watch(member)
                self._watch_error = f"{member.endpoint}: watch ended"
            except asyncio.CancelledError:
                raise
            except _Compacted:
                need_listing = True
                continue
            except grpc.aio.AioRpcError as exc:
                self._watch_error = f"{member.endpoint}: {exc.code().name.lower()}: {exc.details()}"
            except _WatchEnded as exc:
                self._watch_error = f"{member.endpoint}: {exc}"
            except Exception as exc:  # a bug must not stop the watch for good
                log.exception("etcd watch failed")
                self._watch_error = f"{member.endpoint}: {exc!r}"
            self._went_down()
            self._rotate(member)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), backoff)
            backoff = min(backoff * 2, 1.0)

    async def _relist(self, member: _Member) -> None:
        stub = await member.kv()
        asked = time.monotonic()
        reply = await stub.Range(
            rpc.RangeRequest(key=self._root, range_end=_prefix_end(self._root)),
            timeout=self._call_timeout * 2)
        instances: dict[str, Instance] = {}
        leases: dict[str, StoredLease] = {}
        expiry: dict[str, float] = {}
        for kv in reply.kvs:
            self._apply(kv.key, kv.value, instances, leases, expiry)
        changed = (instances != self._instances or expiry != self._expiry
                   or not self._synced.is_set())
        self._instances, self._leases, self._expiry = instances, leases, expiry
        for lease_id in list(self._held):
            if lease_id not in leases and lease_id not in self._lapsed:
                self._held.pop(lease_id, None)
        self._revision = reply.header.revision
        if changed:
            self._changed(reply.header.revision)
        self.freshness.proved(asked)
        self._came_up()

    async def _watch(self, member: _Member) -> None:
        """Follow the prefix on one member, checking every PROGRESS_EVERY that it is current.

        Each tick sends a progress request on the watch stream and a linearizable read (a
        count of one key, answered only with the leader's consent) to the same member. The
        read at time T returns the cluster's revision L; once the watch has delivered up to
        L, the cache is proven current as of T. A member that leaves a request unanswered
        for `stall_after` (frozen, overloaded, or without a leader) ends the watch, and the
        next member is tried; meanwhile expiry is frozen (see Freshness).
        """
        stub = await member.watches()
        kv = await member.kv()
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self._root, range_end=_prefix_end(self._root),
            start_revision=self._revision + 1, progress_notify=True))
        progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        current = rpc.RangeRequest(key=self._root, count_only=True)
        call = stub.Watch(metadata=WATCH_METADATA)
        sent: deque[float] = deque()  # when each unanswered watch request went out
        checks: deque[tuple[float, int]] = deque()  # (asked at, cluster revision then)
        reader = asyncio.create_task(self._read_watch(call, sent, checks),
                                     name="etcd-watch-read")
        check: asyncio.Task[Any] | None = None
        check_at = 0.0
        try:
            sent.append(time.monotonic())
            await self._send(call, create)
            tick = time.monotonic()
            while True:
                done, _ = await asyncio.wait({reader}, timeout=PROGRESS_EVERY)
                if done:
                    reader.result()
                    raise _WatchEnded("watch stream closed")
                now = time.monotonic()
                # Time this process itself was not running (an overloaded host) is not the
                # member's silence: move the pending requests' clocks past it.
                lag = now - tick - PROGRESS_EVERY
                if lag > PROGRESS_EVERY:
                    for n in range(len(sent)):
                        sent[n] += lag
                    check_at += lag
                if sent and now - sent[0] > self._stall_after:
                    raise _WatchEnded(f"no answer on the watch for {now - sent[0]:.1f}s "
                                      "(member frozen, overloaded or cut off)")
                if check is not None and check.done():
                    check.result()  # an error ends the watch: try another member
                    check = None
                if check is not None and now - check_at > self._stall_after:
                    raise _WatchEnded(f"no linearizable read answered for {now - check_at:.1f}s "
                                      "(member frozen, overloaded or without a leader)")
                if check is None:
                    check_at = now
                    check = asyncio.ensure_future(kv.Range(current, timeout=self._stall_after * 2))
                    check.add_done_callback(functools.partial(self._checked, checks, now))
                if len(sent) < 16:
                    sent.append(now)
                    await self._send(call, progress)
                tick = time.monotonic()  # a write held up by the member is its silence
        except TimeoutError:
            raise _WatchEnded("watch requests not accepted (member frozen?)") from None
        finally:
            call.cancel()
            for task in (reader, check):
                if task is not None:
                    await self._drop(task)

    async def _send(self, call: Any, request: Any) -> None:
        """Write one request on the watch stream; TimeoutError if the member does not take it
        within `stall_after`. Never waits on a cancelled gRPC write (see _drop)."""
        write = asyncio.ensure_future(call.write(request))
        try:
            done, _ = await asyncio.wait({write}, timeout=self._stall_after)
        except asyncio.CancelledError:
            self._abandon(write)
            raise
        if not done:
            self._abandon(write)
            raise TimeoutError
        write.result()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        """Cancel without waiting, keeping a reference until it ends."""
        task.cancel()
        if not task.done():
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)

    async def _drop(self, task: asyncio.Task[Any]) -> None:
        """Cancel a helper of the watch and wait briefly: a gRPC stream cancelled early can
        leave its reader waiting for a status that never comes, and close() must not hang
        on it (the channel's close ends it)."""
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=0.5)
        finally:
            if not task.done():
                self._abandon(task)
        if task.done() and not task.cancelled():
            task.exception()  # the same failure, raised above or reported by the next

    async def _read_watch(self, call: Any, sent: deque[float],
                          checks: deque[tuple[float, int]]) -> None:
        """Fold the watch's answers into the cache; any answer pops one request from `sent`."""
        async for response in call:
            if response.compact_revision:
                log.info("etcd revision %d compacted; listing again", self._revision)
                raise _Compacted()
            if response.canceled:
                raise _WatchEnded(f"watch cancelled: {response.cancel_reason or 'no reason'}")
            changed = False
            for event in response.events:
                value = None if event.type == rpc.Event.DELETE else event.kv.value
                changed |= self._apply(event.kv.key, value, self._instances, self._leases,
                                       self._expiry)
            if response.header.revision > self._revision:
                self._revision = response.header.revision
            if changed:
                self._changed(self._revision)
            if response.created:
                if sent:
                    sent.popleft()
                self._came_up()
            elif response.watch_id == -1 and not response.events and sent:
                sent.popleft()  # a progress answer: every event up to its revision was sent
            self._prove(checks)

    def _checked(self, checks: deque[tuple[float, int]], asked: float,
                 done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            checks.append((asked, done.result().header.revision))
            self._prove(checks)

    def _prove(self, checks: deque[tuple[float, int]]) -> None:
        """Linearizable reads whose revision the watch has reached prove the cache current."""
        while checks and checks[0][1] <= self._revision:
            self.freshness.proved(checks.popleft()[0])

    def _apply(self, key: bytes, value: bytes | None, instances: dict[str, Instance],
               leases: dict[str, StoredLease], expiry: dict[str, float]) -> bool:
        """Fold one key into the cache; True when what may be served changed."""
        if not key.startswith(self._root):
            return False
        kind, _, rest = key[len(self._root):].decode(errors="replace").partition("/")
        if kind == "expiry":
            if value is None:
                # The expiry key goes with its lease: lapsed if its time had come.
                if expiry.pop(rest, math.inf) <= time.time() + LAPSE_SLACK:
                    self.expirations += 1
                return False  # etcd deletes the lease's instances in the same revision
            try:
                expires_at = float(value)
            except ValueError:
                return False
            old = expiry.get(rest, math.inf)
            expiry[rest] = expires_at
            # A later expiry changes what is served only if the old one has passed (its
            # instances dropped out); otherwise the snapshot rebuilds when the old one passes.
            return expires_at < old or old <= time.time()
        if kind == "leases":
            if value is None:
                leases.pop(rest, None)
                self._held.pop(rest, None)
                self._lapsed.discard(rest)
            elif (info := self._lease_info(rest, value)) is not None:
                leases[rest] = info
            return False
        if kind != "services":
            return False
        service, _, instance_id = rest.partition("/")
        current = instances.get(instance_id)
        if value is None:
            if current is None or current.service != service:
                return False  # the instance moved to another service in the same transaction
            del instances[instance_id]
            return True
        instance = self._decode_instance(value)
        if instance is None or instance == current:
            return False
        instances[instance_id] = instance
        return True

    def _changed(self, revision: int = 0) -> None:
        """The cache changed (as of the watch's `revision`): rebuild on the next read."""
        super()._changed()

    # availability and outages

    def _down_for(self) -> float:
        if self._disconnected_at is None:
            return 0.0
        return time.monotonic() - self._disconnected_at

    def _went_down(self) -> None:
        if self._disconnected_at is not None:
            return
        self._disconnected_at = time.monotonic()
        log.warning("etcd watch lost (%s); reconnecting", self._watch_error)
        # Wake blocked watchers once the grace is over, so they report the outage.
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self._stale_grace + 0.01, self.changes.notify)

    def _came_up(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        was_down, self._disconnected_at = self._disconnected_at, None
        first = not self._synced.is_set()
        self._synced.set()
        if was_down is None or first:
            return
        now = time.monotonic()
        if now - was_down > self._stale_grace:
            self._outages.append((was_down, now))
            log.info("etcd reachable again after %.1fs", now - was_down)
            for lease_id, held in list(self._held.items()):
                if self._lapsed_in_outage(held):
                    self._mark_lapsed(lease_id)
        self._snapshots.changed()

    def _lapsed_in_outage(self, held: _Held) -> bool:
        """Whether the lease ran out (by our clock) while etcd could not be reached."""
        if held.expires > time.monotonic():
            return False
        down = self._disconnected_at
        if down is not None and time.monotonic() - down > self._stale_grace:
            if held.expires >= down:
                return True
        return any(start <= held.expires <= end for start, end in self._outages)

    def _mark_lapsed(self, lease_id: str) -> None:
        """Refuse keepalives on a lease that ran out during an outage, and revoke what etcd
        kept. Readers drop its instances by their published expiry (after the recovery
        grace, see Freshness) unless the registrar, told UnknownLease, registers them again
        on a new lease first; the revoke waits for that, so it never deletes them under a
        live registrar."""
        self._held.pop(lease_id, None)
        if lease_id in self._lapsed:
            return
        log.info("lease %s ran out (by this process's clock) while etcd could not be reached "
                 "or took no writes; revoking what etcd kept", lease_id)
        self._lapsed.add(lease_id)
        number = _lease_number(lease_id)
        if number is not None:
            self._spawn(self._revoke_lapsed(lease_id, number))

    async def _revoke_lapsed(self, lease_id: str, number: int) -> None:
        await asyncio.sleep(REVOKE_LAPSED_AFTER)
        for _ in range(60):
            try:
                await self._revoke_number(number)
                return
            except BackendUnavailable:
                await asyncio.sleep(1.0)
        log.warning("could not revoke lapsed lease %s; etcd will expire it", lease_id)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        async def run() -> None:
            await coroutine

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # keys and values

    def _lease_key(self, lease_id: str) -> bytes:
        return self._root + b"leases/" + lease_id.encode()

    def _expiry_put(self, lease_id: str, number: int, ttl: int) -> Any:
        """The expiry key: readers drop a lease's instances at this time (wall clock)."""
        return rpc.PutRequest(key=self._root + b"expiry/" + lease_id.encode(),
                              value=repr(time.time() + ttl).encode(), lease=number)

    def _id_key(self, instance_id: str) -> bytes:
        return self._root + b"ids/" + instance_id.encode()

    def _service_key(self, service: str, instance_id: str) -> bytes:
        return self._root + f"services/{service}/{instance_id}".encode()

    @staticmethod
    def _id_compare(id_key: bytes, service: str | None) -> Any:
        if service is None:
            return rpc.Compare(key=id_key, target=rpc.Compare.VERSION,
                               result=rpc.Compare.EQUAL, version=0)
        return rpc.Compare(key=id_key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL,
                           value=service.encode())

    @staticmethod
    def _lease_info(lease_id: str, value: bytes) -> StoredLease | None:
        """The lease key's ttl and owner (its expiry is under its own key)."""
        info = StoredLease.parse(lease_id, value, expiry=False)
        if info is None:
            log.warning("ignoring malformed lease value %r", value[:100])
        return info

    @staticmethod
    def _decode_instance(value: bytes) -> Instance | None:
        try:
            return Instance.from_dict(json.loads(value))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed instance %r: %s", value[:100], exc)
            return None
