"""The bridge from kazoo's threads to the event loop: one session, calls and multis."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.retry import KazooRetry
from kazoo.security import READ_ACL_UNSAFE, make_digest_acl

from pilotfish.catalog.backends.stored import WRITE_ATTEMPTS, CachedCatalog
from pilotfish.catalog.backends.zookeeper.nodes import (
    CONNECTION_ERRORS,
    ELECTION_WAIT,
    INSTANCES,
    LEASES,
    OP_TIMEOUT,
    READ_GRACE,
    SESSION_TIMEOUT,
    Op,
    _failure,
    _InstanceEntry,
    log,
    min_ttl,
)
from pilotfish.catalog.backends.zookeeper.tls import ZkTls
from pilotfish.catalog.interface import BackendUnavailable


class ZooKeeperSession(CachedCatalog):
    """A kazoo session whose answers are applied on the event loop, in ZooKeeper's order."""

    def __init__(self, hosts: list[str], root: str, session_timeout: float = SESSION_TIMEOUT,
                 op_timeout: float = OP_TIMEOUT, read_grace: float = READ_GRACE,
                 credentials: tuple[str, str] | None = None, tls: ZkTls | None = None) -> None:
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
            **(tls.kazoo_options() if tls is not None else {}),
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

    def _shutdown_client(self) -> None:
        # Closing the session deletes the lock node at once and fails whatever call the
        # election thread is blocked in, so it ends promptly.
        self._client.stop()
        if self._elector is not None:
            self._elector.join(ELECTION_WAIT + 1)
        self._client.close()

    # paths

    def _lease_path(self, lease_id: str) -> str:
        return f"{self.root}/{LEASES}/{lease_id}"

    def _marker_path(self, lease_id: str, instance_id: str) -> str:
        return f"{self.root}/{LEASES}/{lease_id}/{instance_id}"

    def _instance_path(self, instance_id: str) -> str:
        return f"{self.root}/{INSTANCES}/{instance_id}"

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
                # Not wait_for: on 3.11 it swallows a cancel that arrives as the answer does,
                # and a registrar cancelled then never ends (its stop() hangs).
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    result = await future
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
            async with asyncio.timeout(limit - now):
                await self._connected.wait()
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

    def _contention(self, what: str, name: str) -> BackendUnavailable:
        return BackendUnavailable(
            f"{what} {name!r}: ZooKeeper kept changing underneath, gave up after "
            f"{WRITE_ATTEMPTS} attempts")

    def _down_message(self) -> str:
        since = time.monotonic() - (self._down_since or time.monotonic())
        return f"ZooKeeper at {','.join(self.hosts)} unreachable for {since:.1f}s"
