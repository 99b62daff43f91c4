"""The ZooKeeper backend under failure, on real ZooKeeper servers on loopback.

1. A three-server ensemble loses a follower and then its leader while registrations and
   keepalives run: no registration is lost, no live instance disappears from reads, and
   the view converges (also through the returned server alone).
2. The only server is down for longer than a TTL: catalog calls and a real
   `pilotfish registry --registry zk://...` process answer "unavailable" promptly, views
   keep their last state, and after the restart registrars re-register on UnknownLease
   and every view converges.
3. Reaping: lapsed leases and their instances are deleted from ZooKeeper by the one
   elected reaper; a kept-alive lease is not; another process takes over the election.
4. Session expiry: the catalog re-establishes its watches on the new session and
   follows changes again.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kazoo.client import KazooClient

from pilotfish.catalog import Catalog, open_catalog
from pilotfish.catalog.backends.zookeeper import ZooKeeperCatalog
from tests.backends.scenarios import (
    Churn,
    Server,
    registered_and_viewed,
    ride_out_an_outage,
)
from tests.fixtures.process import StartPilotfish
from tests.fixtures.watching import eventually, ids, instance, wait_until, wait_until_ids
from tests.fixtures.zookeeper import ZooKeeperEnsemble, ZooKeeperServer

pytestmark = pytest.mark.slow


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[ZooKeeperEnsemble]:
    """Three ZooKeeper servers of this test's own, stopped afterwards."""
    with ZooKeeperEnsemble(tmp_path / "ensemble", 3) as servers:
        yield servers


@pytest.fixture
def lone_server(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A standalone server of this test's own, so stopping it disturbs no other test."""
    with ZooKeeperServer(tmp_path / "zk") as server:
        yield server


async def zk_catalog(url: str) -> ZooKeeperCatalog:
    catalog = await open_catalog(url)
    assert isinstance(catalog, ZooKeeperCatalog)
    return catalog


async def test_ensemble_loses_a_follower_then_its_leader(ensemble: ZooKeeperEnsemble,
                                                         unique: str) -> None:
    url = ensemble.url(f"/ens-{unique}")
    service = f"ens-{unique}"
    writers = [await zk_catalog(url), await zk_catalog(url)]
    reader = await zk_catalog(url)
    alone: Catalog | None = None
    try:
        async with Churn(writers, reader, service, unique, ttl=6, owner="ens", pause=0.02,
                         retry_every=0.1) as churn:
            await asyncio.sleep(1.0)
            reconnects = [c.reconnects for c in (*writers, reader)]
            for role in ("follower", "leader"):
                leader = ensemble.leader()
                victim = leader if role == "leader" else (leader + 1) % 3
                # The leader dies hard; the follower is stopped politely.
                ensemble.stop_member(victim,
                                     signal.SIGKILL if role == "leader" else signal.SIGTERM)
                before = len(churn.registered)
                await asyncio.sleep(4.0)  # longer than a keepalive interval (ttl 6 / 3)
                assert churn.writing
                assert len(churn.registered) > before, f"registrations stalled without the {role}"
                if role == "leader":
                    # Followers drop their clients while they elect: every session moved.
                    assert all(c.reconnects > n for c, n in zip((*writers, reader), reconnects,
                                                                strict=True))
                ensemble.start_member(victim)
                await asyncio.sleep(1.0)
            await churn.finish()

            reads = churn.reads
            print(f"registered {len(churn.registered)} ({churn.retries} retries), "
                  f"{reads.samples} reads, {len(reads.errors)} unavailable")
            assert len(churn.registered) > 100
            assert reads.samples > 200
            # Reads are served from the cache through a blip shorter than the read grace.
            assert len(reads.errors) <= 5, reads.errors[:3]
            # Keepalives carried every lease through both elections: no re-registration.
            await churn.assert_nothing_lost()
            expected = set(churn.registered)
            settled = await wait_until_ids(reader, service, expected, 10)
            for writer in writers:
                await wait_until_ids(writer, service, expected, 10)
            # The server that was leader serves the same view once it is back.
            alone = await zk_catalog(f"zk://{ensemble.servers[leader].hosts}/ens-{unique}")
            again = await wait_until_ids(alone, service, expected, 10)
            assert again.service(service) == settled.service(service)
    finally:
        for catalog in (*writers, reader, *([alone] if alone else [])):
            await catalog.close()


async def test_outage_longer_than_a_ttl(lone_server: ZooKeeperServer, pilotfish: StartPilotfish,
                                        unique: str) -> None:
    # Longer than the read grace (2 s), so reads turn unavailable before the leases lapse
    # on the clock (after which the instances would rightly leave the snapshot instead).
    ttl = 4
    url = lone_server.url(f"/out-{unique}")
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")
    async with (registered_and_viewed(url, unique, ttl, zk_catalog) as outage,
                httpx.AsyncClient(base_url=api.api, timeout=15) as http):
        service, old_lease, reader = outage.service, outage.old_lease, outage.reader
        server = Server(kill=lambda: lone_server.stop(signal.SIGKILL), start=lone_server.start,
                        says="ZooKeeper at ")
        await ride_out_an_outage(
            http, api, outage, server, down_for=ttl + 2.0,
            api_within=1.0, api_more=(
                ("GET", f"/v1/services/{service}", None),
                ("PUT", f"/v1/services/{service}/instances/x-{unique}",
                 {"address": "127.0.0.1", "port": 80, "ttl": 10}),
            ),
            catalog_within=0.5, catalog_more=(
                lambda: reader.lease(old_lease), lambda: reader.revoke(old_lease),
                lambda: outage.writer.register(instance(service, f"o0-{unique}", 1, old_lease))),
            recover_within=15)


async def test_the_elected_reaper_deletes_lapsed_entries(zookeeper_session_server: ZooKeeperServer,
                                                         unique: str) -> None:
    root = f"/reap-{unique}"
    url = zookeeper_session_server.url(root)
    first = await zk_catalog(url)
    second = await zk_catalog(url)
    raw = KazooClient(hosts=zookeeper_session_server.hosts)
    await asyncio.to_thread(raw.start, 10)
    catalogs = [first, second]
    try:
        await eventually(lambda: first.leader or second.leader, 10, "a reaper elected")
        assert [first.leader, second.leader].count(True) == 1
        leader = first if first.leader else second
        other = second if leader is first else first

        kept = await other.create_lease(30, owner="kept")
        await other.register(instance(f"k-{unique}", f"k-{unique}", 80, kept.id))

        async def lapse_some(catalog: ZooKeeperCatalog, tag: str) -> tuple[list[str], float]:
            leases = [await catalog.create_lease(2, owner=tag) for _ in range(3)]
            granted = time.monotonic()
            names = []
            for n, lease in enumerate(leases):
                for m in range(2):
                    name = f"{tag}{n}{m}-{unique}"
                    await catalog.register(instance(f"r-{unique}", name, 9000 + m, lease.id))
                    names.append(name)
            assert len(await asyncio.to_thread(raw.get_children, f"{root}/instances")) >= 6
            return [lease.id for lease in leases] + names, granted

        async def gone(leases_and_names: list[str]) -> bool:
            present = set(await asyncio.to_thread(raw.get_children, f"{root}/leases")) | set(
                await asyncio.to_thread(raw.get_children, f"{root}/instances"))
            return not present & set(leases_and_names)

        # Registered through the process that is not the reaper: reaping is not local.
        doomed, granted = await lapse_some(other, "a")
        await eventually(lambda: gone(doomed), 8, "lapsed leases and instances deleted")
        assert time.monotonic() - granted < 2 + 4
        # The counters follow the deletions: the reaper counts when its transaction's answer
        # arrives, the other process when its watch fires, both a moment after the znodes go.
        await eventually(lambda: leader.reaped == 3, 2, "the reaper counting 3 reaped leases")
        await eventually(lambda: other.expirations == 3, 2,
                         "3 expirations seen by the process that did not reap")
        assert other.reaped == 0

        # The kept-alive lease and its instance are still there.
        assert await asyncio.to_thread(raw.exists, f"{root}/leases/{kept.id}")
        assert await asyncio.to_thread(raw.exists, f"{root}/instances/k-{unique}")
        assert await asyncio.to_thread(raw.get_children, f"{root}/leases/{kept.id}") == [
            f"k-{unique}"]
        assert (await other.snapshot()).get(f"k-{unique}") is not None

        # The reaper goes away: the other process is elected and reaps from then on.
        await leader.close()
        catalogs.remove(leader)
        await eventually(lambda: other.leader, 10, "the other process elected")
        doomed, granted = await lapse_some(other, "b")
        await eventually(lambda: gone(doomed), 8, "lapsed entries deleted by the new reaper")
        await eventually(lambda: other.reaped == 3, 2, "the new reaper counting 3 leases")
        assert await asyncio.to_thread(raw.exists, f"{root}/leases/{kept.id}")
    finally:
        for catalog in catalogs:
            await catalog.close()
        await asyncio.to_thread(raw.stop)
        raw.close()


async def test_session_expiry_is_survived(zookeeper_session_server: ZooKeeperServer,
                                          unique: str) -> None:
    url = zookeeper_session_server.url(f"/exp-{unique}")
    service = f"exp-{unique}"
    catalog = await zk_catalog(url)
    writer = await zk_catalog(url)
    try:
        lease = await writer.create_lease(30)
        await writer.register(instance(service, f"a-{unique}", 80, lease.id))
        await wait_until(catalog, lambda s: ids(s, service) == {f"a-{unique}"}, 5)

        # Expire the catalog's session from outside: close it through a second client.
        client_id = catalog._client.client_id
        assert client_id is not None
        thief = KazooClient(hosts=zookeeper_session_server.hosts, client_id=client_id)
        await asyncio.to_thread(thief.start, 10)
        await asyncio.to_thread(thief.stop)
        thief.close()
        await eventually(lambda: catalog.sessions == 2, 15, "a new session")
        assert catalog._client.client_id != client_id

        # Watches are back on the new session: changes made elsewhere arrive again,
        # to an existing node (a data watch) and to the set of nodes (a children watch).
        await writer.register(instance(service, f"a-{unique}", 90, lease.id))
        await wait_until(catalog,
                         lambda s: (a := s.get(f"a-{unique}")) is not None and a.port == 90, 5)
        await writer.register(instance(service, f"b-{unique}", 81, lease.id))
        await writer.deregister(f"a-{unique}")
        await wait_until(catalog, lambda s: ids(s, service) == {f"b-{unique}"}, 5)
        assert await catalog.healthy()
        # ...and writes through the catalog work on the new session.
        mine = await catalog.create_lease(30)
        assert await catalog.register(instance(service, f"c-{unique}", 82, mine.id))
        await wait_until(writer, lambda s: ids(s, service) == {f"b-{unique}", f"c-{unique}"}, 5)
        await eventually(lambda: catalog.leader or writer.leader, 10, "a reaper elected")
    finally:
        await catalog.close()
        await writer.close()


async def test_a_registry_started_while_zookeeper_is_down(
    lone_server: ZooKeeperServer, pilotfish: StartPilotfish, unique: str
) -> None:
    lone_server.stop()
    url = lone_server.url(f"/late-{unique}")
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")  # waits 5 s, serves
    async with httpx.AsyncClient(base_url=api.api, timeout=15) as http:
        started = time.monotonic()
        answer = await http.get("/v1/catalog")
        assert answer.status_code == 503, answer.text
        assert "ZooKeeper at 127.0.0.1:" in answer.json()["error"]
        assert time.monotonic() - started < 1.0
        lone_server.start()

        async def serving() -> bool:
            return (await http.get("/v1/catalog")).status_code == 200

        await eventually(serving, 10, "API serving once ZooKeeper is up")
        lease = (await http.post("/v1/leases", json={"ttl": 10})).json()
        put = await http.put(f"/v1/services/late-{unique}/instances/l-{unique}",
                             json={"address": "127.0.0.1", "port": 80, "lease": lease["id"]})
        assert put.status_code == 201, put.text
        found = await http.get(f"/v1/services/late-{unique}")
        assert [i["id"] for i in found.json()["instances"]] == [f"l-{unique}"]
