"""The watch that feeds the etcd catalog's cache, and the progress answers that prove it current."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from typing import Any

import grpc
from aetcd import rpc

from pilotfish.catalog.backends.etcd.members import (
    LAPSE_SLACK,
    PROGRESS_EVERY,
    WATCH_METADATA,
    _Compacted,
    _Member,
    _prefix_end,
    _WatchEnded,
    log,
)
from pilotfish.catalog.backends.etcd.outages import EtcdOutages
from pilotfish.catalog.backends.etcd.secure import refusal
from pilotfish.catalog.backends.stored import StoredLease
from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.loop import wait_event


def _electing(error: str) -> bool:
    """Whether a member answered that the cluster has no leader (yet)."""
    return "etcdserver: no leader" in error or "etcdserver: leader changed" in error


class EtcdWatch(EtcdOutages):
    """Follows the prefix (list, then watch from the next revision) and applies what it sees."""

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

    # the watch

    async def _follow(self) -> None:
        """List once, then watch from the next revision; on failure, the next member."""
        backoff = 0.1
        need_listing = True
        renewed = False  # signed in again after a refused token, without moving on
        while not self._closed.is_set():
            member = self._members[self._current]
            used = member.metadata
            try:
                if need_listing:
                    await self._relist(member)
                    need_listing = False
                    backoff = 0.1
                renewed = False
                await self._watch(member)
                self._watch_error = f"{member.endpoint}: watch ended"
            except asyncio.CancelledError:
                raise
            except _Compacted:
                need_listing = True
                continue
            except grpc.aio.AioRpcError as exc:
                if not renewed and member.token_rejected(used, exc.details() or ""):
                    renewed = True
                    continue  # the same member, signed in again
                self._watch_error = self._describe(member, exc)
                self._refuse(refusal(exc, self.security, self.prefix))
            except _WatchEnded as exc:
                if not renewed and member.token_rejected(used, str(exc)):
                    renewed = True
                    continue
                self._watch_error = f"{member.endpoint}: {exc}"
            except Exception as exc:  # a bug must not stop the watch for good
                log.exception("etcd watch failed")
                self._watch_error = f"{member.endpoint}: {exc!r}"
            if self._disconnected_at is None or _electing(self._watch_error):
                # It was up, or a member answered that an election is on (typically 1-2
                # election timeouts): try again soon, not after old failures' delay.
                backoff = 0.1
            self._went_down()
            self._rotate(member)
            await wait_event(self._closed, backoff)
            backoff = min(backoff * 2, 1.0)

    async def _relist(self, member: _Member) -> None:
        stub = await member.kv()
        asked = time.monotonic()
        reply = await stub.Range(
            rpc.RangeRequest(key=self._root, range_end=_prefix_end(self._root)),
            timeout=self._call_timeout * 2, metadata=member.metadata)
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
        self._refuse(None)
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
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self._root, range_end=_prefix_end(self._root),
            start_revision=self._revision + 1, progress_notify=True))
        progress = rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())
        current = rpc.RangeRequest(key=self._root, count_only=True)
        call = stub.Watch(metadata=WATCH_METADATA + member.metadata)
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
                    check = asyncio.ensure_future(self._current_revision(member, current))
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

    async def _current_revision(self, member: _Member, request: Any) -> Any:
        """The linearizable read of a watch check. A lapsed token (the established watch goes
        on without one) is renewed here, so the watch is not dropped for it."""
        for attempt in (1, 2):
            kv = await member.kv()
            used = member.metadata
            try:
                return await kv.Range(request, timeout=self._stall_after * 2, metadata=used)
            except grpc.aio.AioRpcError as exc:
                if attempt == 2 or not member.token_rejected(used, exc.details() or ""):
                    raise
        raise AssertionError("unreachable")

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
