"""The etcd backend under failure, on real etcd processes on loopback.

1. A three-member cluster loses its leader (SIGKILL) while registrations and keepalives
   run: nothing registered is lost, no live instance ever disappears from reads, and
   once the member returns it serves the same view.
2. The only server is down for longer than a TTL: catalog calls and a real
   `pilotfish registry` process report the backend unavailable promptly (503, not a
   hang), consumers keep their last view, and after the restart the registrar
   re-registers on UnknownLease and every view converges.
3. A registrar dies while etcd is down: etcd revives its lease on restart, but reads
   go by the last expiry the registrar published, so its instances stay gone.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import aetcd
import httpx
import pytest

from pilotfish.catalog import BackendUnavailable, Catalog, open_catalog
from pilotfish.catalog.backends.etcd import EtcdCatalog
from pilotfish.catalog.expiry import RECOVERY_GRACE
from tests.backends.scenarios import (
    Churn,
    Server,
    registered_and_viewed,
    ride_out_an_outage,
)
from tests.fixtures.etcd import EtcdCluster, EtcdServer
from tests.fixtures.process import StartPilotfish
from tests.fixtures.watching import (
    eventually,
    ids,
    instance,
    wait_until,
    wait_until_back,
    wait_until_ids,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, stopped after the test."""
    with EtcdCluster(3) as members:
        yield members


@pytest.fixture
def lone_server() -> Iterator[EtcdServer]:
    """A single etcd of this test's own, so stopping it disturbs no other test."""
    with EtcdServer() as server:
        yield server


async def test_cluster_survives_losing_its_leader(cluster: EtcdCluster, unique: str) -> None:
    leader = cluster.leader_index()
    assert leader is not None
    # Every catalog starts on the leader, so killing it also moves their watches.
    order = [leader] + [n for n in range(3) if n != leader]
    url = "etcd://" + ",".join(cluster.members[n].endpoint for n in order) + f"/c-{unique}"
    service = f"cl-{unique}"
    writers = [await open_catalog(url), await open_catalog(url)]
    reader = await open_catalog(url)
    rejoined: Catalog | None = None
    try:
        async with Churn(writers, reader, service, unique, ttl=5, owner="reg", pause=0.03,
                         retry_every=0.2) as churn:
            await asyncio.sleep(1.5)
            cluster.stop_member(leader, signal.SIGKILL)
            await asyncio.sleep(4.0)  # an election, keepalives (ttl 5 / 3), many registrations
            assert churn.writing
            before_return = len(churn.registered)
            cluster.start_member(leader)
            await asyncio.sleep(1.5)
            await churn.finish()

            assert len(churn.registered) > 50 and len(churn.registered) > before_return
            assert churn.reads.samples > 100
            assert churn.reads.errors == [], churn.reads.errors[:3]
            # No lease was lost: keepalives carried every one through the election.
            await churn.assert_nothing_lost()
            # No registration lost, and the returning member converges on the same view.
            expected = set(churn.registered)
            snapshot = await wait_until_ids(reader, service, expected, 5)
            rejoined = await open_catalog(
                f"etcd://{cluster.members[leader].endpoint}/c-{unique}")
            again = await wait_until_ids(rejoined, service, expected, 10)
            assert again.service(service) == snapshot.service(service)
    finally:
        for catalog in (*writers, reader, *([rejoined] if rejoined else [])):
            await catalog.close()


async def test_a_lone_member_saying_no_leader_is_cut_off_not_electing(
        cluster: EtcdCluster, unique: str) -> None:
    """With two of three members gone, the last answers "no leader": a lost quorum (or a
    host cut off), which reads say after the 1 s grace, once the member's linearizable read
    has stalled."""
    url = cluster.url(f"e-{unique}")
    service = f"el-{unique}"
    writer, reader = await open_catalog(url), await open_catalog(url)
    try:
        lease = await writer.create_lease(30)
        await writer.register(instance(service, f"a-{unique}", 20000, lease.id))
        await wait_until_ids(reader, service, {f"a-{unique}"}, 5)
        lost = time.monotonic()
        for index in (0, 1):
            cluster.stop_member(index, signal.SIGKILL)
        failure = None
        while failure is None and time.monotonic() - lost < 15:
            try:
                assert ids(await reader.snapshot(), service) == {f"a-{unique}"}
            except BackendUnavailable as exc:
                failure = (time.monotonic() - lost, str(exc))
            await asyncio.sleep(0.05)
        assert failure is not None, "reads never said the cluster lost its quorum"
        took, said = failure
        assert took < 3.8, (took, said)
        assert "watch down" in said, said
        for index in (0, 1):
            cluster.start_member(index)
        await wait_until_back(reader, lambda snapshot: ids(snapshot, service), 15)
    finally:
        await writer.close()
        await reader.close()


async def test_outage_longer_than_a_ttl(lone_server: EtcdServer, pilotfish: StartPilotfish,
                                        unique: str) -> None:
    ttl = 2
    url = lone_server.url(f"o-{unique}")
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")
    async with (registered_and_viewed(url, unique, ttl) as outage,
                httpx.AsyncClient(base_url=api.api, timeout=15) as http):
        server = Server(kill=lambda: lone_server.stop_member(0, signal.SIGKILL),
                        start=lambda: lone_server.start_member(0), says="etcd")
        await ride_out_an_outage(http, api, outage, server, down_for=ttl + 2.0,
                                 api_within=2.0, catalog_within=1.0, recover_within=10)


async def test_a_registrar_killed_during_an_outage_stays_gone(
    lone_server: EtcdServer, pilotfish: StartPilotfish, unique: str
) -> None:
    ttl = 6  # long enough that etcd still holds the revived lease after the reader's grace
    url = lone_server.url(f"k-{unique}")
    service = f"kd-{unique}"
    registrar = pilotfish("register", "--registry", url, "--ttl", str(ttl),
                          f"{service}/{service}-0=127.0.0.1:20000", expect=())
    reader = await open_catalog(url)
    member = lone_server.members[0]
    raw = aetcd.Client(host="127.0.0.1", port=member.client_port)
    key = f"/k-{unique}/services/{service}/{service}-0".encode()
    try:
        await wait_until(reader, lambda s: len(s.service(service)) == 1, 30)
        lone_server.stop_member(0, signal.SIGKILL)
        registrar.stop(signal.SIGKILL)
        killed = time.monotonic()  # the registrar's last keepalive was before this
        await asyncio.sleep(ttl - 1.0)
        lone_server.start_member(0)

        # Past the last published expiry + 1 s, and past the grace a lease that ran out
        # during the outage gets once the reader sees etcd again (Freshness), while etcd
        # still holds the revived lease: every successful read leaves the instance out.
        await wait_until_back(reader, lambda s: True, 10)
        assert isinstance(reader, EtcdCatalog)
        await eventually(lambda: not reader.freshness.stale, 5, "the reader's proof of etcd")
        served_until = max(killed + ttl + 1.0, time.monotonic() + RECOVERY_GRACE)
        checked = 0
        while time.monotonic() < served_until + 1.5:
            snapshot = await reader.snapshot()
            if time.monotonic() > served_until:
                assert not snapshot.service(service), "a dead registrar's instance was served"
                checked += 1
            await asyncio.sleep(0.05)
        assert checked > 10
        assert await raw.get(key) is not None, "etcd did not revive the lease: nothing tested"
        # etcd's own expiry of the revived lease deletes the key in the end.
        await eventually(lambda: _absent(raw, key), ttl + 5, "etcd deleting the revived lease")
    finally:
        await raw.close()
        await reader.close()


async def _absent(raw: aetcd.Client, key: bytes) -> bool:
    return await raw.get(key) is None
