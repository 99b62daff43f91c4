"""Calls to etcd: one member at a time, rotating on failure, within the deadline; keys."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from aetcd import rpc

import pilotfish.catalog.backends.etcd.requests as requests
from pilotfish.catalog.backends.etcd.members import (
    CALL_TIMEOUT,
    DEADLINE,
    OUTAGE_MEMORY,
    STALE_GRACE,
    STALL_AFTER,
    T,
    _Held,
    _Member,
    _server_answered,
    _transient,
    log,
)
from pilotfish.catalog.backends.etcd.secure import Security, hint, refusal
from pilotfish.catalog.backends.stored import CachedCatalog, StoredLease, decode_instance
from pilotfish.catalog.expiry import Freshness
from pilotfish.catalog.interface import BackendUnavailable
from pilotfish.catalog.model import Instance


class EtcdCalls(CachedCatalog):
    """The connection to the members, the calls that fail over between them, and the key layout."""

    def __init__(self, endpoints: list[tuple[str, int]], prefix: str = "pilotfish",
                 call_timeout: float = CALL_TIMEOUT, deadline: float = DEADLINE,
                 stale_grace: float = STALE_GRACE, stall_after: float = STALL_AFTER,
                 security: Security | None = None) -> None:
        # Expiry runs only while progress answers prove the cache current (fail static).
        super().__init__(Freshness(bound=min(STALL_AFTER, stall_after)))
        self.security = security or Security()
        self._members = [_Member(host, port, self.security) for host, port in endpoints]
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
        self._refusal: str | None = None  # etcd refuses us for good: what to fix
        self._refused = asyncio.Event()

    # calls

    async def _call(self, op: Callable[[_Member, float], Awaitable[T]],
                    call_timeout: float | None = None) -> T:
        """Run op on the current member, moving to the next on failure, within the deadline.

        Gives up early when every member refused the connection twice in a row, so a
        stopped server is reported within a fraction of a second rather than at the deadline.
        A token etcd no longer knows is renewed on the same member; refused credentials,
        permissions or certificates raise BackendUnavailable saying what to fix.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline
        per_call = self._call_timeout if call_timeout is None else call_timeout
        unreachable = 0
        attempt = 0
        renewals = 0
        while True:
            member = self._members[self._current]
            remaining = deadline - loop.time()
            used = member.metadata
            try:
                return await op(member, max(0.05, min(per_call, remaining)))
            except grpc.aio.AioRpcError as exc:
                if renewals < 2 and member.token_rejected(used, exc.details() or ""):
                    renewals += 1
                    continue
                if not _transient(exc):
                    if refusal(exc, self.security, self.prefix) is not None:
                        raise BackendUnavailable(f"etcd {self._describe(member, exc)}") from exc
                    raise
                detail = self._describe(member, exc)
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
        return await self._call(partial(requests.txn, request))

    async def _revoke_number(self, number: int) -> None:
        """Revoke an etcd lease; a lease already gone is fine. Raises BackendUnavailable."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._call(partial(requests.revoke, number))

    async def _quiet_revoke(self, number: int) -> None:
        with contextlib.suppress(Exception):
            await self._revoke_number(number)

    def _describe(self, member: _Member, exc: grpc.aio.AioRpcError) -> str:
        """`host:port: what went wrong`, in words that say what to fix when it is ours."""
        problem = refusal(exc, self.security, self.prefix)
        if problem is not None:
            return f"{member.endpoint}: {problem}"
        details = exc.details() or ""
        return (f"{member.endpoint}: {exc.code().name.lower()}: {details}"
                f"{hint(details, self.security)}")

    def _refuse(self, problem: str | None) -> None:
        """Note (or, with None, clear) a refusal that no retry will cure: start() reports it."""
        self._refusal = problem
        if problem is None:
            self._refused.clear()
        else:
            self._refused.set()

    def _rotate(self, failed: _Member) -> None:
        if self._members[self._current] is failed:
            self._current = (self._current + 1) % len(self._members)

    def _unavailable(self, detail: str) -> BackendUnavailable:
        return BackendUnavailable(f"etcd {self._endpoints()} unreachable: {detail}")

    def _endpoints(self) -> str:
        return ",".join(m.endpoint for m in self._members)

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

    def _entry_key(self, name: str) -> bytes:
        return self._root + b"config/" + name.encode()

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

    _decode_instance = staticmethod(decode_instance)
