"""The catalog contract: written once, run unchanged against every backend in BACKENDS."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx
import pytest

from pilotfish.catalog import Catalog, Instance, InvalidField, UnknownLease
from tests.fixtures.watching import wait_until

TTL = 2
GRACE = 1.0  # docs/architecture.md guarantee 1: never served later than expiry + 1 s


def make(service: str, instance_id: str, lease: str, port: int = 8080, **extra: object) -> Instance:
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=port,
                    lease=lease, **extra)  # type: ignore[arg-type]


async def test_registered_instance_is_in_the_snapshot(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30, owner="contract")
    assert await catalog.register(make(f"web-{unique}", f"w1-{unique}", lease.id, tags=("v1",)))
    snapshot = await wait_until(catalog, lambda s: s.get(f"w1-{unique}"), 5)
    instance = snapshot.get(f"w1-{unique}")
    assert instance is not None
    assert (instance.service, instance.address, instance.port) == (f"web-{unique}", "127.0.0.1",
                                                                   8080)
    assert instance.tags == ("v1",)
    assert instance.lease == lease.id
    assert [i.id for i in snapshot.service(f"WEB-{unique}")] == [f"w1-{unique}"]


async def test_register_is_an_idempotent_upsert(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    first = make(f"api-{unique}", f"a-{unique}", lease.id)
    assert await catalog.register(first) is True
    assert await catalog.register(first) is False
    updated = make(f"api-{unique}", f"a-{unique}", lease.id, port=9090, weight=5,
                   meta={"zone": "b"})
    assert await catalog.register(updated) is False
    snapshot = await wait_until(
        catalog, lambda s: (i := s.get(f"a-{unique}")) is not None and i.port == 9090, 5)
    assert snapshot.get(f"a-{unique}") == updated
    assert len(snapshot.service(f"api-{unique}")) == 1


async def test_register_on_an_unknown_lease_is_refused(catalog: Catalog, unique: str) -> None:
    with pytest.raises(UnknownLease):
        await catalog.register(make(f"db-{unique}", f"d-{unique}", "no-such-lease"))
    assert (await catalog.snapshot()).get(f"d-{unique}") is None


async def test_keepalive_on_an_unknown_lease_says_unknown(catalog: Catalog) -> None:
    with pytest.raises(UnknownLease):
        await catalog.keepalive("no-such-lease")


async def test_lease_reports_ttl_and_owner_until_revoked(catalog: Catalog) -> None:
    lease = await catalog.create_lease(30, owner="sidecar-1")
    seen = await catalog.lease(lease.id)
    assert seen is not None and (seen.ttl, seen.owner) == (30, "sidecar-1")
    assert seen.expires_at > time.time() + 20
    assert await catalog.revoke(lease.id) is True
    assert await catalog.lease(lease.id) is None
    assert await catalog.revoke(lease.id) is False


async def test_ttl_below_the_minimum_is_invalid(catalog: Catalog) -> None:
    with pytest.raises(InvalidField) as error:
        await catalog.create_lease(1)
    assert error.value.field == "ttl"


@pytest.mark.slow
async def test_instance_is_never_served_after_its_lease_lapses(
    catalog: Catalog, unique: str
) -> None:
    lease = await catalog.create_lease(TTL)
    granted = time.monotonic()
    await catalog.register(make(f"exp-{unique}", f"e-{unique}", lease.id))
    assert (await wait_until(catalog, lambda s: s.get(f"e-{unique}"), 1)).get(f"e-{unique}")
    # Served until close to expiry, gone by expiry + grace.
    await asyncio.sleep(TTL - 0.7 - (time.monotonic() - granted))
    assert (await catalog.snapshot()).get(f"e-{unique}") is not None
    await wait_until(catalog, lambda s: s.get(f"e-{unique}") is None, 0.7 + GRACE)
    assert time.monotonic() - granted <= TTL + GRACE
    with pytest.raises(UnknownLease):
        await catalog.keepalive(lease.id)


@pytest.mark.slow
async def test_keepalive_extends_the_lease(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(TTL)
    await catalog.register(make(f"ka-{unique}", f"k-{unique}", lease.id))
    for _ in range(3):
        await asyncio.sleep(TTL / 2)
        renewed = await catalog.keepalive(lease.id)
        assert renewed.id == lease.id
    last = time.monotonic()
    assert (await catalog.snapshot()).get(f"k-{unique}") is not None
    await wait_until(catalog, lambda s: s.get(f"k-{unique}") is None, TTL + GRACE + 0.5)
    assert time.monotonic() - last <= TTL + GRACE


async def test_revoke_removes_every_instance_on_the_lease(catalog: Catalog, unique: str) -> None:
    doomed = await catalog.create_lease(30)
    kept = await catalog.create_lease(30)
    for n in range(3):
        await catalog.register(make(f"rv-{unique}", f"r{n}-{unique}", doomed.id, port=8000 + n))
    await catalog.register(make(f"rv-{unique}", f"keep-{unique}", kept.id))
    await wait_until(catalog, lambda s: len(s.service(f"rv-{unique}")) == 4, 5)
    assert await catalog.revoke(doomed.id) is True
    snapshot = await wait_until(catalog, lambda s: len(s.service(f"rv-{unique}")) == 1, 5)
    assert [i.id for i in snapshot.service(f"rv-{unique}")] == [f"keep-{unique}"]


async def test_instance_moved_to_another_lease_survives_the_old_one(
    catalog: Catalog, unique: str
) -> None:
    old = await catalog.create_lease(30)
    new = await catalog.create_lease(30)
    await catalog.register(make(f"mv-{unique}", f"m-{unique}", old.id))
    await catalog.register(make(f"mv-{unique}", f"m-{unique}", new.id))
    await catalog.revoke(old.id)
    await asyncio.sleep(0.3)
    instance = (await catalog.snapshot()).get(f"m-{unique}")
    assert instance is not None and instance.lease == new.id


async def test_deregister_removes_one_instance(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    await catalog.register(make(f"dr-{unique}", f"x-{unique}", lease.id))
    await catalog.register(make(f"dr-{unique}", f"y-{unique}", lease.id, port=8081))
    removed = await catalog.deregister(f"x-{unique}")
    assert removed is not None and removed.id == f"x-{unique}"
    assert await catalog.deregister(f"x-{unique}") is None
    snapshot = await wait_until(catalog, lambda s: s.get(f"x-{unique}") is None, 5)
    assert snapshot.get(f"y-{unique}") is not None
    assert await catalog.keepalive(lease.id)  # the lease itself lives on


async def test_watch_wakes_on_register_and_deregister(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    before = await catalog.snapshot()
    waiter = asyncio.create_task(catalog.watch(before.index, 10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    started = time.monotonic()
    await catalog.register(make(f"wt-{unique}", f"w-{unique}", lease.id))
    after = await asyncio.wait_for(waiter, 5)
    assert after.index > before.index
    assert time.monotonic() - started < 1.0
    snapshot = await wait_until(catalog, lambda s: s.get(f"w-{unique}"), 5)
    waiter = asyncio.create_task(catalog.watch(snapshot.index, 10))
    await asyncio.sleep(0.1)
    await catalog.deregister(f"w-{unique}")
    gone = await asyncio.wait_for(waiter, 5)
    assert gone.index > snapshot.index


@pytest.mark.slow
async def test_watch_wakes_on_expiry(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(TTL)
    granted = time.monotonic()
    await catalog.register(make(f"wx-{unique}", f"w-{unique}", lease.id))
    snapshot = await wait_until(catalog, lambda s: s.get(f"w-{unique}"), 5)
    while snapshot.get(f"w-{unique}") is not None:
        snapshot = await catalog.watch(snapshot.index, TTL + 5)
    assert time.monotonic() - granted <= TTL + GRACE


async def test_watch_returns_the_current_snapshot_on_timeout(catalog: Catalog) -> None:
    current = await catalog.snapshot()
    started = time.monotonic()
    quiet = await catalog.watch(current.index, 0.3)
    # Another test's keys may change a shared server; when nothing changed, the index holds.
    if quiet.index == current.index:
        assert time.monotonic() - started >= 0.25


async def test_snapshot_index_never_goes_backwards(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    indexes = [(await catalog.snapshot()).index]
    for n in range(5):
        name = f"i{n}-{unique}"
        await catalog.register(make(f"ix-{unique}", name, lease.id))
        indexes.append((await wait_until(catalog, lambda s: s.get(name), 5)).index)  # noqa: B023 (awaited at once)
    await catalog.revoke(lease.id)
    indexes.append((await wait_until(catalog, lambda s: not s.service(f"ix-{unique}"), 5)).index)
    assert indexes == sorted(indexes)
    assert indexes[-1] > indexes[0]


async def test_many_registrations_on_one_lease(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    await asyncio.gather(*(
        catalog.register(make(f"bulk-{unique}", f"b{n}-{unique}", lease.id, port=10000 + n))
        for n in range(50)
    ))
    await wait_until(catalog, lambda s: len(s.service(f"bulk-{unique}")) == 50, 10)
    await catalog.keepalive(lease.id)
    await catalog.revoke(lease.id)
    await wait_until(catalog, lambda s: not s.service(f"bulk-{unique}"), 5)


@pytest.mark.slow
async def test_random_operations_while_leases_lapse_keep_the_catalog_consistent(
    catalog: Catalog, unique: str
) -> None:
    rng = random.Random(unique)
    leases: list[str] = []
    ids = [f"z{n}-{unique}" for n in range(12)]
    deadline = time.monotonic() + 3.0  # longer than a TTL, so leases lapse mid-way
    for n in range(20_000):
        if time.monotonic() > deadline:
            break
        roll = rng.random()
        try:
            if roll < 0.1 or not leases:
                leases.append((await catalog.create_lease(TTL)).id)
            elif roll < 0.45:
                await catalog.register(make(f"rnd-{unique}", rng.choice(ids), rng.choice(leases),
                                            port=rng.randint(1, 65535)))
            elif roll < 0.6:
                await catalog.keepalive(rng.choice(leases))
            elif roll < 0.65:
                await catalog.revoke(rng.choice(leases))
            elif roll < 0.75:
                await catalog.deregister(rng.choice(ids))
            else:
                (await catalog.snapshot()).service(f"rnd-{unique}")
        except UnknownLease:
            pass
        if n % 50 == 0:  # mostly back to back, as a busy API process calls it
            await asyncio.sleep(0.01)
    # Whatever is still served rides on a live lease, or is gone within the grace period.
    orphans = {(i.id, i.lease) for i in (await catalog.snapshot()).service(f"rnd-{unique}")
               if await catalog.lease(i.lease) is None}
    await asyncio.sleep(GRACE + 0.2)
    served = {(i.id, i.lease) for i in (await catalog.snapshot()).service(f"rnd-{unique}")}
    assert not orphans & served, orphans


async def _lease_count(catalog: Catalog, backend_url: str) -> int:
    """Live leases as the backend counts them (an http:// catalog asks its API's /metrics)."""
    if catalog.lease_count is not None:
        return catalog.lease_count
    async with httpx.AsyncClient(base_url=backend_url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("pilotfish_leases "))))


async def _wait_for_count(catalog: Catalog, backend_url: str, done: Callable[[int], bool],
                          timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while not done(count := await _lease_count(catalog, backend_url)):
        assert time.monotonic() < deadline, f"lease count stuck at {count}"
        await asyncio.sleep(0.05)
    return count


async def test_lease_count_returns_to_where_it_started_after_cycles(
    catalog: Catalog, backend_url: str, unique: str
) -> None:
    # Consul and http:// share one server for the session: other tests' leases may lapse
    # meanwhile, so there the count must come back to at most where it started.
    shared = backend_url.startswith(("consul", "http"))
    start = await _lease_count(catalog, backend_url)
    held = [await catalog.create_lease(30) for _ in range(3)]
    await _wait_for_count(catalog, backend_url, lambda n: n >= 3 if shared else n == start + 3)
    for n in range(30):
        lease = await catalog.create_lease(30, owner=f"cycle-{unique}")
        await catalog.register(make(f"lc-{unique}", f"c{n}-{unique}", lease.id))
        assert await catalog.deregister(f"c{n}-{unique}") is not None
        assert await catalog.revoke(lease.id)
    for lease in held:
        assert await catalog.revoke(lease.id)
    await _wait_for_count(catalog, backend_url, lambda n: n <= start if shared else n == start)
