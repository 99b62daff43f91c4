"""Holds one lease and a desired set of instances, and converges the catalog to that set.

The registrar remembers two things: what it *wants* registered (the desired set, changed
by `sync`, `add` and `remove`) and what it believes the catalog *holds* on its behalf.
One background task closes the gap: it deregisters what is no longer wanted, registers
what is missing or changed, and renews the lease once per interval. A write that fails
(the backend is unreachable, a member is electing a leader) leaves the gap open, and the
task retries until it closes; a lease reported unknown (it lapsed, or the registry
restarted empty) means a new lease and everything wanted registered again. So an instance
removed while the backend was down is gone once it returns, and one added then is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TypeVar

from pilotfish.catalog.interface import Catalog, CatalogError, UnknownLease
from pilotfish.catalog.model import Instance, ttl_seconds
from pilotfish.loop import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

T = TypeVar("T")
WRITES = 16
"""Backend calls one converge pass keeps in flight (a burst of containers is written in
parallel, not one round trip after another)."""

LOOKOUT_PAUSE = 0.05
"""Catalog changes closer together than this are looked at once."""

Vouch = Callable[[], bool]
"""Whether the registrar may renew its lease and register now (a sidecar that lost sight of
Docker says no, so its lease lapses instead of vouching for containers it cannot see)."""


class Registrar:
    """One lease, a desired set of instances, one keepalive per interval (ttl / 3).

    `claims` names instances already in the catalog that belong to this registrar although
    it did not register them in this life (a restarted sidecar's stable ids): those on a
    lease with the same owner are read once at start and withdrawn or moved onto the new
    lease like the rest.
    """

    def __init__(
        self, catalog: Catalog, ttl: int, owner: str, instances: Iterable[Instance] = (), *,
        vouch: Vouch | None = None, claims: Callable[[Instance], bool] | None = None,
        retry: float = 0.5,
    ) -> None:
        self.catalog = catalog
        self.ttl = ttl_seconds(ttl)
        self.owner = owner
        self.lease_id: str | None = None
        self.reregistrations = 0  # leases found lost and replaced
        self.errors = 0  # failed backend calls
        self.renewed_at: float | None = None  # monotonic time of the last lease grant/renewal
        self.retry = min(retry, self.interval)
        self._vouch = vouch
        self._claims = claims
        self._claimed = claims is None
        self._desired: dict[str, Instance] = {i.id: i for i in instances}
        self._held: dict[str, Instance] = {}  # what the catalog holds for us, as we last wrote
        self._changes = 0  # bumped by every change to the desired set
        self._done = 0  # the change count the last finished pass started from
        self._failure: BaseException | None = None  # what the last finished pass failed with
        self._passed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lookout: asyncio.Task[None] | None = None
        self._renew_now = False  # the lookout saw our instances vanish: keepalive at once
        self._silent = False

    @property
    def interval(self) -> float:
        """Seconds between keepalives."""
        return self.ttl / 3

    @property
    def instances(self) -> dict[str, Instance]:
        """What this registrar wants registered, by id."""
        return dict(self._desired)

    @property
    def in_sync(self) -> bool:
        """Whether the catalog holds exactly the desired set, on the current lease."""
        if self.lease_id is None:
            return False
        if self._held.keys() != self._desired.keys():
            return False
        return all(self._holds(want) for want in self._desired.values())

    def _holds(self, want: Instance) -> bool:
        """Whether the catalog holds `want` as it is, on the current lease."""
        held = self._held.get(want.id)
        return held is not None and held.lease == self.lease_id and _fields(held) == _fields(
            want)

    @property
    def held(self) -> int:
        """How many instances the catalog holds for this registrar, as far as it knows."""
        return len(self._held)

    @property
    def lease_age(self) -> float | None:
        """Seconds since the lease was last granted or renewed (None before the first)."""
        return None if self.renewed_at is None else time.monotonic() - self.renewed_at

    async def start(self, require: bool = True) -> None:
        """Take the lease, register the desired set, and keep converging in the background.

        With `require`, a backend that does not answer now is an error; without, the
        background task keeps trying until it does.
        """
        try:
            await self._converge()
        except Exception as exc:
            if require:
                raise
            self.errors += 1
            log.warning("registrar %s: registry not reachable yet, retrying: %s", self.owner, exc)
        log.info("registrar %s holds %d instances on lease %s (ttl %ds)",
                 self.owner, len(self._desired), self.lease_id, self.ttl)
        self._task = asyncio.create_task(self._run(), name=f"registrar-{self.owner}")
        self._lookout = asyncio.create_task(self._look_out(), name=f"lookout-{self.owner}")

    async def stop(self, revoke: bool = True) -> None:
        """Stop converging; revoke the lease (removing its instances) unless told not to."""
        await cancel_and_wait(self._task, self._lookout)
        self._task = self._lookout = None
        if revoke and self.lease_id is not None:
            with contextlib.suppress(Exception):
                await self.catalog.revoke(self.lease_id)
            self.lease_id = None

    async def sync(self, desired: Iterable[Instance], wait: bool = True) -> None:
        """Make the desired set exactly `desired`: what is missing gets registered, what this
        registrar holds and is not in it gets withdrawn.

        With `wait`, return once a pass has written the change (raising what that pass
        failed with; the change stays desired and is retried); without, return at once.
        """
        self._desired = {i.id: i for i in desired}
        await self._changed(wait)

    def want(self, desired: Iterable[Instance]) -> None:
        """sync() without waiting, callable from plain code: the background task converges."""
        self._desired = {i.id: i for i in desired}
        self._changes += 1
        self._wake.set()

    async def add(self, instance: Instance, wait: bool = True) -> None:
        """Want an instance registered (or updated) on this registrar's lease."""
        self._desired[instance.id] = instance
        await self._changed(wait)

    async def remove(self, instance_id: str, wait: bool = True) -> None:
        """Want an instance withdrawn; retried until the catalog no longer has it."""
        self._desired.pop(instance_id, None)
        await self._changed(wait)

    async def _changed(self, wait: bool) -> None:
        self._changes += 1
        target = self._changes
        if self._task is None:  # not started: start() writes the whole set
            return
        self._wake.set()
        if not wait:
            return
        while self._done < target:
            self._passed.clear()
            await self._passed.wait()
        if self._failure is not None:
            raise self._failure

    def _vouching(self) -> bool:
        vouching = self._vouch is None or self._vouch()
        if vouching == self._silent:
            self._silent = not vouching
            if vouching:
                log.info("registrar %s: renewing its lease again", self.owner)
            else:
                log.warning("registrar %s: cannot vouch for its instances; no keepalives, "
                            "the lease will lapse", self.owner)
        return vouching

    async def _run(self) -> None:
        next_keepalive = time.monotonic() + self.interval
        retry_at = None if self.in_sync else time.monotonic() + self.retry
        while True:
            wake_at = next_keepalive if retry_at is None else min(next_keepalive, retry_at)
            await wait_event(self._wake, max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            started_from = self._changes
            failure: BaseException | None = None
            try:
                if self._renew_now or time.monotonic() >= next_keepalive:
                    self._renew_now = False
                    # Until it succeeds (or while the registrar cannot vouch), try again soon.
                    next_keepalive = time.monotonic() + self.retry
                    if await self._keepalive():
                        next_keepalive = time.monotonic() + self.interval
                await self._converge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = exc
                self.errors += 1
                log.warning("registrar %s: %s; retrying in %gs", self.owner,
                            exc or type(exc).__name__, self.retry)
            retry_at = None if failure is None and self.in_sync else \
                time.monotonic() + self.retry
            self._done, self._failure = started_from, failure
            self._passed.set()

    async def _look_out(self) -> None:
        """Renew at once when instances on the current lease vanish from the catalog: a
        lease revoked under a live registrar (by an operator, or by etcd 3.4's resuming old
        leader, see docs/faults.md) is replaced within a few round trips, not at the next
        keepalive. A lease that is fine costs one extra keepalive. It looks only when the
        catalog signals a change, so a write-only http:// client never starts following."""
        changes = self.catalog.changes
        generation = changes.generation
        while True:
            if not await changes.wait_past(generation, self.interval):
                continue
            generation = changes.generation
            if not self._renew_now and await self._lost_sight():
                self._renew_now = True
                self._wake.set()
            await asyncio.sleep(max(LOOKOUT_PAUSE, self.retry if self._renew_now else 0.0))

    async def _lost_sight(self) -> bool:
        """Whether the catalog lacks an instance this registrar holds on its current lease."""
        lease = self.lease_id
        if lease is None or not self._held:
            return False
        try:
            snapshot = await self.catalog.snapshot()
        except CatalogError:
            return False  # an outage: keepalives retry on their own
        return any(held.lease == lease and snapshot.get(key) is None
                   for key, held in self._held.items())

    async def _keepalive(self) -> bool:
        """Renew the lease; False when the registrar cannot vouch for its instances now."""
        if self.lease_id is None:
            return True  # nothing to renew: the next pass takes a lease
        if not self._vouching():
            return False
        try:
            await self.catalog.keepalive(self.lease_id)
        except UnknownLease:
            self._lost_lease()
        else:
            self.renewed_at = time.monotonic()
        return True

    def _lost_lease(self) -> None:
        """The lease is gone, and every instance on it: start over on a new one."""
        lost, self.lease_id = self.lease_id, None
        self.reregistrations += 1
        self._held = {key: held for key, held in self._held.items() if held.lease != lost}
        log.info("registrar %s: lease %s lapsed, registering %d instances again",
                 self.owner, lost, len(self._desired))

    async def _converge(self) -> None:
        """One pass: withdraw what is held and not wanted, register what is wanted and not
        held as wanted (up to WRITES calls at a time). Raises what failed once every call of
        the pass has ended; the next pass continues from there."""
        if not self._claimed:
            await self._claim()
        await self._each([key for key in self._held if key not in self._desired],
                         self._withdraw)
        if not self._vouching():
            return
        try:
            await self._register_missing()
        except UnknownLease:  # lapsed between keepalives: once more on a new lease
            self._lost_lease()
            await self._register_missing()

    async def _withdraw(self, key: str) -> None:
        await self.catalog.deregister(key)
        self._held.pop(key, None)

    async def _register_missing(self) -> None:
        if self.lease_id is None:
            lease = await self.catalog.create_lease(self.ttl, self.owner)
            self.lease_id, self.renewed_at = lease.id, time.monotonic()
        lease_id = self.lease_id
        missing = [replace(want, lease=lease_id) for want in self._desired.values()
                   if not self._holds(want)]
        await self._each(missing, self._register)

    async def _register(self, wanted: Instance) -> None:
        await self.catalog.register(wanted)
        # What was written is what the catalog holds, even if the wish changed meanwhile;
        # the next pass compares it with the new wish.
        self._held[wanted.id] = wanted

    async def _each(self, items: list[T], write: Callable[[T], Awaitable[None]]) -> None:
        """Run `write` on every item, WRITES at a time; then raise the first failure (an
        UnknownLease before any other, so the caller can take a new lease)."""
        if not items:
            return
        limit = asyncio.Semaphore(WRITES)

        async def bounded(item: T) -> None:
            async with limit:
                await write(item)

        results = await asyncio.gather(*(bounded(i) for i in items), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if isinstance(failure, UnknownLease):
                raise failure
        if failures:
            raise failures[0]

    async def _claim(self) -> None:
        """Take over what an earlier life of this registrar left: instances `claims` names,
        on a live lease of the same owner (never another owner's, whatever their ids)."""
        assert self._claims is not None
        snapshot = await self.catalog.snapshot()
        owners: dict[str, str | None] = {}
        for instance in snapshot.instances.values():
            if not self._claims(instance) or instance.id in self._held:
                continue
            if instance.lease not in owners:
                lease = await self.catalog.lease(instance.lease)
                owners[instance.lease] = lease.owner if lease is not None else None
            if owners[instance.lease] == self.owner:
                self._held[instance.id] = instance
        self._claimed = True


def _fields(instance: Instance) -> tuple[object, ...]:
    """Everything about an instance but its lease (cheaper than building a copy to compare)."""
    return (instance.service, instance.address, instance.port, instance.tags,
            instance.meta, instance.weight, instance.health, instance.checks)
