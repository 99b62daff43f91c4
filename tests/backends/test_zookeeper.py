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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kazoo.client import KazooClient

from pilotfish.registry import BackendUnavailable, Catalog, Instance, Snapshot, open_catalog
from pilotfish.registry.backends.zookeeper import ZooKeeperCatalog
from pilotfish.registry.registrar import Registrar
from pilotfish.registry.view import CatalogView
from tests.fixtures.process import StartPilotfish
from tests.fixtures.zookeeper import ZooKeeperEnsemble, ZooKeeperServer

pytestmark = pytest.mark.slow


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[ZooKeeperEnsemble]:
    """Three ZooKeeper servers of this test's own, stopped afterwards."""
    servers = ZooKeeperEnsemble(tmp_path / "ensemble", 3)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def lone_server(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A standalone server of this test's own, so stopping it disturbs no other test."""
    server = ZooKeeperServer(tmp_path / "zk")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make(service: str, instance_id: str, port: int, lease: str = "unset") -> Instance:
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=port, lease=lease)


def ids(snapshot: Snapshot, service: str) -> set[str]:
    return {i.id for i in snapshot.service(service)}


async def zk_catalog(url: str) -> ZooKeeperCatalog:
    catalog = await open_catalog(url)
    assert isinstance(catalog, ZooKeeperCatalog)
    return catalog


async def follow(catalog: Catalog, predicate: Callable[[Snapshot], object],
                 timeout: float) -> Snapshot:
    """Follow the catalog's watch until predicate(snapshot) holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    snapshot = await catalog.snapshot()
    while not predicate(snapshot):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not reached within {timeout}s; last {snapshot}"
        snapshot = await catalog.watch(snapshot.index, remaining)
    return snapshot


async def until(check: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    """Poll an async check until it is true; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)


@dataclass
class Reads:
    """What a reader saw while servers went away."""

    samples: int = 0
    errors: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


async def sample_reads(reader: Catalog, service: str, reads: Reads, stop: asyncio.Event) -> None:
    """Read every 20 ms; instances are only ever added here, so none may disappear."""
    while not stop.is_set():
        try:
            snapshot = await reader.snapshot()
        except BackendUnavailable as exc:
            reads.errors.append(str(exc))
        else:
            present = ids(snapshot, service)
            reads.vanished += sorted(reads.seen - present)
            reads.seen |= present
            reads.samples += 1
        await asyncio.sleep(0.02)


async def register_until_done(registrar: Registrar, instance: Instance, deadline: float) -> int:
    """Register as a sidecar does, retrying while ZooKeeper is unavailable; returns retries."""
    retries = 0
    while True:
        try:
            await registrar.add(instance)
            return retries
        except BackendUnavailable:
            retries += 1
            assert time.monotonic() < deadline, f"{instance.id} was never registered"
            await asyncio.sleep(0.1)


async def test_ensemble_loses_a_follower_then_its_leader(ensemble: ZooKeeperEnsemble,
                                                         unique: str) -> None:
    url = ensemble.url(f"/ens-{unique}")
    service = f"ens-{unique}"
    writers = [await zk_catalog(url), await zk_catalog(url)]
    reader = await zk_catalog(url)
    registrars = [Registrar(writers[n % 2], ttl=6, owner=f"ens-{n}") for n in range(3)]
    stop = asyncio.Event()
    reads = Reads()
    registered: list[str] = []
    retries = 0
    alone: Catalog | None = None
    try:
        for registrar in registrars:
            await registrar.start()
        leases = [r.lease_id for r in registrars]
        sampler = asyncio.create_task(sample_reads(reader, service, reads, stop))

        async def keep_registering() -> None:
            nonlocal retries
            n = 0
            while not stop.is_set():
                instance = make(service, f"i{n}-{unique}", 20000 + n)
                retries += await register_until_done(registrars[n % 3], instance,
                                                     time.monotonic() + 15)
                registered.append(instance.id)
                n += 1
                await asyncio.sleep(0.02)

        writing = asyncio.create_task(keep_registering())
        await asyncio.sleep(1.0)
        reconnects = [c.reconnects for c in (*writers, reader)]
        for role in ("follower", "leader"):
            leader = ensemble.leader()
            victim = leader if role == "leader" else (leader + 1) % 3
            # The leader dies hard; the follower is stopped politely.
            ensemble.stop_member(victim, signal.SIGKILL if role == "leader" else signal.SIGTERM)
            before = len(registered)
            await asyncio.sleep(4.0)  # longer than a keepalive interval (ttl 6 / 3)
            assert not writing.done()
            assert len(registered) > before, f"registrations stalled without the {role}"
            if role == "leader":
                # Followers drop their clients while they elect: every session moved.
                assert all(c.reconnects > n for c, n in zip((*writers, reader), reconnects,
                                                            strict=True))
            ensemble.start_member(victim)
            await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(writing, 20)
        await sampler

        print(f"registered {len(registered)} ({retries} retries), {reads.samples} reads, "
              f"{len(reads.errors)} unavailable")
        assert len(registered) > 100
        assert reads.samples > 200
        assert reads.vanished == [], f"live instances vanished from reads: {reads.vanished[:5]}"
        # Reads are served from the cache through a blip shorter than the read grace.
        assert len(reads.errors) <= 5, reads.errors[:3]
        # Keepalives carried every lease through both elections: no re-registration.
        assert [r.lease_id for r in registrars] == leases
        assert all(r.reregistrations == 0 for r in registrars)
        for registrar in registrars:
            assert registrar.lease_id is not None
            await writers[0].keepalive(registrar.lease_id)
        expected = set(registered)
        settled = await follow(reader, lambda s: ids(s, service) == expected, 10)
        for writer in writers:
            await follow(writer, lambda s: ids(s, service) == expected, 10)
        # The server that was leader serves the same view once it is back.
        alone = await zk_catalog(f"zk://{ensemble.servers[leader].hosts}/ens-{unique}")
        again = await follow(alone, lambda s: ids(s, service) == expected, 10)
        assert again.service(service) == settled.service(service)
    finally:
        stop.set()
        for registrar in registrars:
            await registrar.stop(revoke=False)
        for catalog in (*writers, reader, *([alone] if alone else [])):
            await catalog.close()


async def test_outage_longer_than_a_ttl(lone_server: ZooKeeperServer, pilotfish: StartPilotfish,
                                        unique: str) -> None:
    # Longer than the read grace (2 s), so reads turn unavailable before the leases lapse
    # on the clock (after which the instances would rightly leave the snapshot instead).
    ttl = 4
    url = lone_server.url(f"/out-{unique}")
    service = f"out-{unique}"
    expected = {f"o{n}-{unique}" for n in range(3)}
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")
    writer = await zk_catalog(url)
    reader = await zk_catalog(url)
    registrar = Registrar(writer, ttl=ttl, owner="outage",
                          instances=[make(service, i, 21000 + n) for n, i in
                                     enumerate(sorted(expected))])
    view = CatalogView(reader, wait=5.0, retry=0.2)
    try:
        await registrar.start()
        old_lease = registrar.lease_id
        assert old_lease is not None
        await view.start()
        await follow(reader, lambda s: ids(s, service) == expected, 5)
        await until(lambda: _true(ids(view.snapshot, service) == expected), 5, "view filled")

        async with httpx.AsyncClient(base_url=api.api, timeout=15) as http:

            async def api_shows(wanted: Callable[[list[dict[str, str]]], bool]) -> bool:
                answer = await http.get("/v1/catalog")
                mine = [i for i in answer.json().get("instances", []) if i["service"] == service]
                return answer.status_code == 200 and wanted(mine)

            await until(lambda: api_shows(lambda mine: {i["id"] for i in mine} == expected), 5,
                        "API filled")
            first = await http.get("/v1/catalog")
            blocked = asyncio.create_task(http.get(
                "/v1/catalog", params={"index": first.json()["index"], "wait": "30s"}))
            await asyncio.sleep(0.3)

            lone_server.stop(signal.SIGKILL)
            stopped = time.monotonic()

            # A long-poll waiting on the catalog ends in 503 instead of hanging for 30 s.
            answer = await asyncio.wait_for(blocked, 8)
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "unavailable"
            assert "ZooKeeper" in answer.json()["error"]
            assert time.monotonic() - stopped < 4

            # Every kind of API call: 503 with a clear message, promptly.
            for method, path, body in (
                ("GET", "/v1/catalog", None),
                ("GET", f"/v1/services/{service}", None),
                ("POST", "/v1/leases", {"ttl": 10}),
                ("PUT", f"/v1/leases/{old_lease}/keepalive", None),
                ("PUT", f"/v1/services/{service}/instances/x-{unique}",
                 {"address": "127.0.0.1", "port": 80, "ttl": 10}),
            ):
                started = time.monotonic()
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 503, (method, path, answer.text)
                error = answer.json()
                assert error["code"] == "unavailable"
                assert error["error"].startswith(
                    "registry backend unavailable: ZooKeeper at "), error
                assert time.monotonic() - started < 1.0, (method, path)
            health = await http.get("/v1/health")
            assert health.status_code == 503

            # The catalog itself: BackendUnavailable at once, never a hang.
            for call in (lambda: reader.create_lease(10), lambda: writer.keepalive(old_lease),
                         reader.snapshot, lambda: reader.deregister(f"o0-{unique}"),
                         lambda: reader.lease(old_lease), lambda: reader.revoke(old_lease),
                         lambda: writer.register(make(service, f"o0-{unique}", 1, old_lease))):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await call()
                assert time.monotonic() - started < 0.5
            assert not await reader.healthy()

            # Consumers fail static: the view keeps the instances it last had.
            await until(lambda: _true(view.stale), 5, "view marked stale")
            assert ids(view.snapshot, service) == expected

            # Down for longer than the TTL, then back with the same data.
            await asyncio.sleep(max(0.0, stopped + ttl + 2.0 - time.monotonic()))
            lone_server.start()

            # The registrar's keepalive hears "unknown lease" and registers everything again.
            await until(lambda: _true(registrar.reregistrations >= 1
                                      and registrar.lease_id not in (None, old_lease)),
                        15, "re-registration on UnknownLease")
            new_lease = registrar.lease_id

            def converged(snapshot: Snapshot) -> bool:
                mine = snapshot.service(service)
                return {i.id for i in mine} == expected and all(i.lease == new_lease
                                                                for i in mine)

            await follow(reader, converged, 10)
            await until(lambda: _true(not view.stale and converged(view.snapshot)), 10,
                        "view converged")
            assert await reader.healthy()
            assert await reader.lease(old_lease) is None

            await until(lambda: api_shows(lambda mine: {i["id"] for i in mine} == expected and all(
                i["lease"] == new_lease for i in mine)), 10, "API converged")
            assert (await http.get("/v1/health")).status_code == 200
    finally:
        await view.stop()
        await registrar.stop(revoke=False)
        await writer.close()
        await reader.close()


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
        await until(lambda: _true(first.leader or second.leader), 10, "a reaper elected")
        assert [first.leader, second.leader].count(True) == 1
        leader = first if first.leader else second
        other = second if leader is first else first

        kept = await other.create_lease(30, owner="kept")
        await other.register(make(f"k-{unique}", f"k-{unique}", 80, kept.id))

        async def lapse_some(catalog: ZooKeeperCatalog, tag: str) -> tuple[list[str], float]:
            leases = [await catalog.create_lease(2, owner=tag) for _ in range(3)]
            granted = time.monotonic()
            names = []
            for n, lease in enumerate(leases):
                for m in range(2):
                    name = f"{tag}{n}{m}-{unique}"
                    await catalog.register(make(f"r-{unique}", name, 9000 + m, lease.id))
                    names.append(name)
            assert len(await asyncio.to_thread(raw.get_children, f"{root}/instances")) >= 6
            return [lease.id for lease in leases] + names, granted

        async def gone(leases_and_names: list[str]) -> bool:
            present = set(await asyncio.to_thread(raw.get_children, f"{root}/leases")) | set(
                await asyncio.to_thread(raw.get_children, f"{root}/instances"))
            return not present & set(leases_and_names)

        # Registered through the process that is not the reaper: reaping is not local.
        doomed, granted = await lapse_some(other, "a")
        await until(lambda: gone(doomed), 8, "lapsed leases and instances deleted")
        assert time.monotonic() - granted < 2 + 4
        assert leader.reaped >= 3
        assert other.reaped == 0
        assert other.expirations >= 3  # seen to lapse by every process, reaped by one

        # The kept-alive lease and its instance are still there.
        assert await asyncio.to_thread(raw.exists, f"{root}/leases/{kept.id}")
        assert await asyncio.to_thread(raw.exists, f"{root}/instances/k-{unique}")
        assert await asyncio.to_thread(raw.get_children, f"{root}/leases/{kept.id}") == [
            f"k-{unique}"]
        assert (await other.snapshot()).get(f"k-{unique}") is not None

        # The reaper goes away: the other process is elected and reaps from then on.
        await leader.close()
        catalogs.remove(leader)
        await until(lambda: _true(other.leader), 10, "the other process elected")
        doomed, granted = await lapse_some(other, "b")
        await until(lambda: gone(doomed), 8, "lapsed entries deleted by the new reaper")
        assert other.reaped >= 3
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
        await writer.register(make(service, f"a-{unique}", 80, lease.id))
        await follow(catalog, lambda s: ids(s, service) == {f"a-{unique}"}, 5)

        # Expire the catalog's session from outside: close it through a second client.
        client_id = catalog._client.client_id
        assert client_id is not None
        thief = KazooClient(hosts=zookeeper_session_server.hosts, client_id=client_id)
        await asyncio.to_thread(thief.start, 10)
        await asyncio.to_thread(thief.stop)
        thief.close()
        await until(lambda: _true(catalog.sessions == 2), 15, "a new session")
        assert catalog._client.client_id != client_id

        # Watches are back on the new session: changes made elsewhere arrive again,
        # to an existing node (a data watch) and to the set of nodes (a children watch).
        await writer.register(make(service, f"a-{unique}", 90, lease.id))
        await follow(catalog, lambda s: (a := s.get(f"a-{unique}")) is not None and a.port == 90,
                     5)
        await writer.register(make(service, f"b-{unique}", 81, lease.id))
        await writer.deregister(f"a-{unique}")
        await follow(catalog, lambda s: ids(s, service) == {f"b-{unique}"}, 5)
        assert await catalog.healthy()
        # ...and writes through the catalog work on the new session.
        mine = await catalog.create_lease(30)
        assert await catalog.register(make(service, f"c-{unique}", 82, mine.id))
        await follow(writer, lambda s: ids(s, service) == {f"b-{unique}", f"c-{unique}"}, 5)
        await until(lambda: _true(catalog.leader or writer.leader), 10, "a reaper elected")
    finally:
        await catalog.close()
        await writer.close()


async def _true(value: object) -> bool:
    return bool(value)


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

        await until(serving, 10, "API serving once ZooKeeper is up")
        lease = (await http.post("/v1/leases", json={"ttl": 10})).json()
        put = await http.put(f"/v1/services/late-{unique}/instances/l-{unique}",
                             json={"address": "127.0.0.1", "port": 80, "lease": lease["id"]})
        assert put.status_code == 201, put.text
        found = await http.get(f"/v1/services/late-{unique}")
        assert [i["id"] for i in found.json()["instances"]] == [f"l-{unique}"]
