"""The registrar on every backend: one lease, a desired set, and a catalog converged to it.

The first tests run on each backend's shared server; the outage test gives each backend that
can be taken away (etcd, ZooKeeper, the Consul double, a registry API for http://) a server
of its own, kills it while an instance is being withdrawn, and proves the instance is gone
and the rest registered once the server is back.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pilotfish.catalog import BackendUnavailable, Catalog, open_catalog
from pilotfish.catalog.interface import Snapshot
from pilotfish.registrar.registrar import Registrar
from tests.fixtures.consul import ConsulDouble
from tests.fixtures.etcd import EtcdServer
from tests.fixtures.process import start_pilotfish
from tests.fixtures.watching import eventually, ids, instance, wait_until, wait_until_back
from tests.fixtures.zookeeper import ZooKeeperServer


async def test_registrar_keeps_instances_alive_past_the_ttl(catalog: Catalog, unique: str) -> None:
    registrar = Registrar(catalog, ttl=2, owner=f"sidecar-{unique}")
    await registrar.start()
    try:
        for n in range(3):
            await registrar.add(instance(f"reg-{unique}", f"r{n}-{unique}", 9000 + n))
        await wait_until(catalog, lambda s: len(s.service(f"reg-{unique}")) == 3, 5)
        await asyncio.sleep(3.5)  # well past the TTL: only keepalives hold them
        assert len((await catalog.snapshot()).service(f"reg-{unique}")) == 3
        leases = {i.lease for i in (await catalog.snapshot()).service(f"reg-{unique}")}
        assert leases == {registrar.lease_id}
    finally:
        await registrar.stop()
    await wait_until(catalog, lambda s: not s.service(f"reg-{unique}"), 5)


async def test_registrar_registers_again_at_once_when_its_lease_is_revoked(
    catalog: Catalog, unique: str
) -> None:
    """A lease revoked under a live registrar (an operator, or etcd 3.4's resuming old
    leader) is replaced as soon as the catalog shows the instances gone, long before the
    next keepalive (every 10 s here)."""
    registrar = Registrar(catalog, ttl=30, owner=f"sidecar-{unique}")
    await registrar.start()
    try:
        await registrar.add(instance(f"rr-{unique}", f"a-{unique}", 9000))
        await registrar.add(instance(f"rr-{unique}", f"b-{unique}", 9001))
        await wait_until(catalog, lambda s: len(s.service(f"rr-{unique}")) == 2, 5)
        await asyncio.sleep(0.5)  # the lookout's first look after the registrations
        lost = registrar.lease_id
        assert lost is not None
        await catalog.revoke(lost)
        # a look, a keepalive answered "unknown lease", a new lease and two writes (up to
        # 2 s with the Consul double on a loaded machine); the keepalive is 10 s away
        snapshot = await wait_until(
            catalog, lambda s: {i.lease for i in s.service(f"rr-{unique}")} - {lost} != set()
            and len(s.service(f"rr-{unique}")) == 2, 4)
        assert registrar.lease_id != lost
        assert registrar.reregistrations == 1
        assert {i.lease for i in snapshot.service(f"rr-{unique}")} == {registrar.lease_id}
        await registrar.remove(f"a-{unique}")
        await wait_until(catalog, lambda s: len(s.service(f"rr-{unique}")) == 1, 5)
    finally:
        await registrar.stop()


async def test_sync_converges_by_difference_with_registrator_style_ids(
    catalog: Catalog, unique: str
) -> None:
    """sync() withdraws only what left the set, registers only what joined or changed; the
    untouched instances keep their lease and are not written again. Ids contain ':'."""
    service = f"sy-{unique}"
    a, b, c, d = (instance(service, f"host-{unique}:web-{n}:80", 9000 + n) for n in range(4))
    registrar = Registrar(catalog, ttl=10, owner=f"sidecar-{unique}")
    await registrar.start()
    try:
        await registrar.sync([a, b, c])
        await wait_until(catalog, lambda s: ids(s, service) == {a.id, b.id, c.id}, 5)
        assert registrar.in_sync
        before = (await catalog.snapshot()).get(b.id)
        await registrar.sync([b, c, d, ])
        snapshot = await wait_until(catalog, lambda s: ids(s, service) == {b.id, c.id, d.id}, 5)
        assert snapshot.get(b.id) == before
        critical = type(c)(**{**c.to_dict(), "tags": ("x",), "health": "critical"})
        await registrar.sync([b, critical, d])
        await wait_until(catalog, lambda s: (got := s.get(c.id)) is not None
                         and got.health == "critical" and got.tags == ("x",), 5)
        assert registrar.in_sync
    finally:
        await registrar.stop()
    await wait_until(catalog, lambda s: not s.service(service), 5)


async def test_a_restarted_registrar_claims_what_its_predecessor_left(
    catalog: Catalog, unique: str
) -> None:
    """A registrar that died without revoking left its instances on a lease still alive; its
    successor (same owner, same stable ids) moves the wanted ones onto its own lease and
    withdraws the rest at once, instead of leaving them served until the old lease lapses.
    Ids it would claim on another owner's lease (another engine's sidecar with the same
    host name) are left alone."""
    service = f"cl-{unique}"
    mine = lambda i: i.id.startswith(f"h-{unique}:")  # noqa: E731
    kept, gone, stranger = (instance(service, f"h-{unique}:c{n}:80", 9000 + n)
                            for n in range(3))
    other = instance(service, f"elsewhere-{unique}:c0:80", 9100)
    first = Registrar(catalog, ttl=30, owner=f"h-{unique}/engine-1",
                      instances=[kept, gone, other])
    neighbour = Registrar(catalog, ttl=30, owner=f"h-{unique}/engine-2", instances=[stranger])
    await first.start()
    await first.stop(revoke=False)  # as if killed: its lease lives on for 30 s
    await neighbour.start()
    await wait_until(catalog, lambda s: len(s.service(service)) == 4, 5)
    second = Registrar(catalog, ttl=30, owner=f"h-{unique}/engine-1", instances=[kept],
                       claims=mine)
    await second.start()
    try:
        def claimed(s: Snapshot) -> bool:
            held = s.get(kept.id)
            return (ids(s, service) == {kept.id, other.id, stranger.id}
                    and held is not None and held.lease == second.lease_id)

        # The withdrawal and the move onto the new lease are separate writes: wait for both.
        await wait_until(catalog, claimed, 5)
        assert second.in_sync
    finally:
        await second.stop()
        await neighbour.stop()
        assert first.lease_id is not None
        await catalog.revoke(first.lease_id)


async def test_a_registrar_that_cannot_vouch_lets_its_lease_lapse(
    catalog: Catalog, unique: str
) -> None:
    """No keepalive while vouch() says no (a sidecar blind to Docker): the instances lapse
    with the lease; once it vouches again, a new lease carries them back."""
    service = f"vo-{unique}"
    vouching = [True]
    registrar = Registrar(catalog, ttl=2, owner=f"vouch-{unique}",
                          instances=[instance(service, f"v-{unique}", 9000)],
                          vouch=lambda: vouching[0])
    await registrar.start()
    try:
        await wait_until(catalog, lambda s: len(s.service(service)) == 1, 5)
        first = registrar.lease_id
        vouching[0] = False
        await wait_until(catalog, lambda s: not s.service(service), 2 + 2)
        vouching[0] = True
        snapshot = await wait_until(catalog, lambda s: len(s.service(service)) == 1, 4)
        assert snapshot.service(service)[0].lease == registrar.lease_id != first
    finally:
        await registrar.stop()


@dataclass
class Droppable:
    """A backend server of the test's own: its URL, and how to kill and restart it."""

    url: str
    kill: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture(params=["etcd", "zookeeper", "consul", "http"])
def droppable(request: pytest.FixtureRequest, unique: str) -> Iterator[Droppable]:
    """One server per backend that can go away (memory:// lives inside the process)."""
    if request.param == "etcd":
        with EtcdServer() as etcd:
            yield Droppable(etcd.url(f"d-{unique}"), lambda: etcd.stop_member(0, signal.SIGKILL),
                            lambda: etcd.start_member(0))
    elif request.param == "zookeeper":
        with ZooKeeperServer() as zk:
            yield Droppable(zk.url(f"/d-{unique}"), lambda: zk.stop(signal.SIGKILL), zk.start)
    elif request.param == "consul":
        with ConsulDouble() as double:
            yield Droppable(double.url(), lambda: double.stop(signal.SIGKILL), double.start)
    else:
        # The API is what goes away; the catalog behind it (etcd) keeps what it had.
        with EtcdServer() as etcd:
            args = ("registry", "--registry", etcd.url(f"d-{unique}"), "--api")
            api = [start_pilotfish(*args, "127.0.0.1:0", timeout=60)]
            address = api[0].listening["registry API"]

            def restart() -> None:
                api.append(start_pilotfish(*args, address, timeout=60))

            try:
                yield Droppable(api[0].api, lambda: api[-1].stop(signal.SIGKILL), restart)
            finally:
                for process in api:
                    process.stop()


async def test_an_instance_removed_during_an_outage_is_gone_once_the_backend_returns(
    droppable: Droppable, unique: str
) -> None:
    """The backend dies while an instance is being withdrawn (and another added): the remove
    fails, but stays wanted, and once the backend is back the catalog matches the set."""
    service = f"dr-{unique}"
    a, b, c = (instance(service, f"h:{unique}:c{n}:80", 9000 + n) for n in range(3))
    writer = await open_catalog(droppable.url)
    reader = await open_catalog(droppable.url)
    registrar = Registrar(writer, ttl=10, owner=f"drop-{unique}", instances=[a, b])
    try:
        await registrar.start()
        await wait_until(reader, lambda s: ids(s, service) == {a.id, b.id}, 5)

        droppable.kill()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(registrar.remove(a.id), 20)
        await registrar.add(c, wait=False)
        assert not registrar.in_sync
        await asyncio.sleep(1.5)  # retries keep failing meanwhile
        droppable.start()

        await wait_until_back(reader, lambda s: ids(s, service) == {b.id, c.id}, 20)
        await eventually(lambda: registrar.in_sync, 10, "registrar in sync")
        assert registrar.errors > 0
    finally:
        await registrar.stop()
        await writer.close()
        await reader.close()
