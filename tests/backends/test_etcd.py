"""The etcd backend under failure, on real etcd processes on loopback.

1. A three-member cluster loses its leader (SIGKILL) while registrations and keepalives
   run: nothing registered is lost, no live instance ever disappears from reads, and
   once the member returns it serves the same view.
2. The only server is down for longer than a TTL: catalog calls and a real
   `pilotfish registry` process report the backend unavailable promptly (503, not a
   hang), consumers keep their last view, and after the restart the registrar
   re-registers on UnknownLease and every view converges.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from pilotfish.registry import BackendUnavailable, Catalog, Instance, Snapshot, open_catalog
from pilotfish.registry.registrar import Registrar
from pilotfish.registry.view import CatalogView
from tests.fixtures.etcd import EtcdCluster, EtcdServer
from tests.fixtures.process import StartPilotfish

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, stopped after the test."""
    members = EtcdCluster(3)
    try:
        members.start()
        yield members
    finally:
        members.stop()


@pytest.fixture
def lone_server() -> Iterator[EtcdServer]:
    """A single etcd of this test's own, so stopping it disturbs no other test."""
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make(service: str, instance_id: str, port: int) -> Instance:
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=port,
                    lease="unset")


async def wait_for(catalog: Catalog, predicate: object, timeout: float) -> Snapshot:
    """Follow the catalog's watch until predicate(snapshot) holds; fail after timeout."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    snapshot = await catalog.snapshot()
    while not predicate(snapshot):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"not reached within {timeout}s; last {snapshot}"
        snapshot = await catalog.watch(snapshot.index, remaining)
    return snapshot


async def eventually(check: object, timeout: float, what: str) -> None:
    """Poll an async check until it returns true; fail with `what` after timeout."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.1)


@dataclass
class ReadLog:
    """What a reader saw while the cluster lost a member."""

    samples: int = 0
    errors: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


async def watch_reads(reader: Catalog, service: str, log: ReadLog, stop: asyncio.Event) -> None:
    """Sample the reader every 20 ms: instances are only ever added, so none may vanish."""
    while not stop.is_set():
        try:
            snapshot = await reader.snapshot()
        except BackendUnavailable as exc:
            log.errors.append(str(exc))
        else:
            present = {i.id for i in snapshot.service(service)}
            log.vanished.extend(sorted(log.seen - present))
            log.seen |= present
            log.samples += 1
        await asyncio.sleep(0.02)


async def add_until_done(registrar: Registrar, instance: Instance, deadline: float) -> int:
    """Register like a sidecar does: retry while the backend is unavailable; returns retries."""
    retries = 0
    while True:
        try:
            await registrar.add(instance)
            return retries
        except BackendUnavailable:
            retries += 1
            assert time.monotonic() < deadline, f"{instance.id} never registered"
            await asyncio.sleep(0.2)


async def test_cluster_survives_losing_its_leader(cluster: EtcdCluster, unique: str) -> None:
    leader = cluster.leader_index()
    assert leader is not None
    # Every catalog starts on the leader, so killing it also moves their watches.
    order = [leader] + [n for n in range(3) if n != leader]
    url = "etcd://" + ",".join(cluster.members[n].endpoint for n in order) + f"/c-{unique}"
    service = f"cl-{unique}"
    writers = [await open_catalog(url), await open_catalog(url)]
    reader = await open_catalog(url)
    registrars = [Registrar(writers[n % 2], ttl=5, owner=f"reg-{n}") for n in range(3)]
    stop = asyncio.Event()
    reads = ReadLog()
    registered: list[str] = []
    retries = 0
    rejoined: Catalog | None = None
    try:
        for registrar in registrars:
            await registrar.start()
        leases = [r.lease_id for r in registrars]
        sampler = asyncio.create_task(watch_reads(reader, service, reads, stop))

        async def keep_registering() -> None:
            nonlocal retries
            n = 0
            while not stop.is_set():
                instance = make(service, f"i{n}-{unique}", 20000 + n)
                retries += await add_until_done(registrars[n % 3], instance,
                                                time.monotonic() + 15)
                registered.append(instance.id)
                n += 1
                await asyncio.sleep(0.03)

        writer_task = asyncio.create_task(keep_registering())
        await asyncio.sleep(1.5)
        cluster.stop_member(leader, signal.SIGKILL)
        await asyncio.sleep(4.0)  # an election, keepalives (ttl 5 / 3) and many registrations
        assert not writer_task.done()
        before_return = len(registered)
        cluster.start_member(leader)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.wait_for(writer_task, 20)
        await sampler

        assert len(registered) > 50 and len(registered) > before_return
        assert reads.samples > 100
        assert reads.errors == [], reads.errors[:3]
        assert reads.vanished == [], f"live instances disappeared from reads: {reads.vanished[:5]}"
        # No lease was lost: keepalives carried every one through the election.
        assert [r.lease_id for r in registrars] == leases
        assert all(r.reregistrations == 0 for r in registrars)
        for registrar in registrars:
            assert registrar.lease_id is not None
            await registrars[0].catalog.keepalive(registrar.lease_id)
        # No registration lost, and the returning member converges on the same view.
        expected = set(registered)
        snapshot = await wait_for(
            reader, lambda s: {i.id for i in s.service(service)} == expected, 5)
        rejoined = await open_catalog(
            f"etcd://{cluster.members[leader].endpoint}/c-{unique}")
        again = await wait_for(
            rejoined, lambda s: {i.id for i in s.service(service)} == expected, 10)
        assert again.service(service) == snapshot.service(service)
    finally:
        stop.set()
        for registrar in registrars:
            await registrar.stop(revoke=False)
        for catalog in (*writers, reader, *( [rejoined] if rejoined else [])):
            await catalog.close()


async def test_outage_longer_than_a_ttl(lone_server: EtcdServer, pilotfish: StartPilotfish,
                                        unique: str) -> None:
    ttl = 2
    url = lone_server.url(f"o-{unique}")
    service = f"out-{unique}"
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")
    writer = await open_catalog(url)
    reader = await open_catalog(url)
    registrar = Registrar(writer, ttl=ttl, owner="outage",
                          instances=[make(service, f"o{n}-{unique}", 21000 + n) for n in range(3)])
    view = CatalogView(reader, wait=5.0, retry=0.2)
    ids = {f"o{n}-{unique}" for n in range(3)}
    try:
        await registrar.start()
        old_lease = registrar.lease_id
        await view.start()
        await wait_for(reader, lambda s: {i.id for i in s.service(service)} == ids, 5)
        await eventually(lambda: _async(len(view.snapshot.service(service)) == 3), 5, "view")

        async with httpx.AsyncClient(base_url=api.api, timeout=15) as http:
            first = await http.get("/v1/catalog")
            assert first.status_code == 200
            blocked = asyncio.create_task(http.get(
                "/v1/catalog", params={"index": first.json()["index"], "wait": "30s"}))
            await asyncio.sleep(0.3)

            lone_server.stop_member(0, signal.SIGKILL)
            stopped = time.monotonic()

            # A blocking read waiting on the catalog ends with 503 instead of hanging.
            answer = await asyncio.wait_for(blocked, 6)
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "unavailable"
            assert "etcd" in answer.json()["error"]
            assert time.monotonic() - stopped < 4

            # Reads and writes through the API: 503 with a clear message, promptly.
            for method, path, body in (("GET", "/v1/catalog", None),
                                       ("POST", "/v1/leases", {"ttl": 10}),
                                       ("PUT", f"/v1/leases/{old_lease}/keepalive", None)):
                started = time.monotonic()
                answer = await http.request(method, path, json=body)
                assert answer.status_code == 503, (method, path, answer.text)
                error = answer.json()
                assert error["code"] == "unavailable"
                assert "registry backend unavailable" in error["error"]
                assert "etcd" in error["error"], error
                assert time.monotonic() - started < 2.0, (method, path)

            # The catalog itself: BackendUnavailable within a fraction of a second.
            for call in (lambda: reader.create_lease(10), lambda: writer.keepalive(str(old_lease)),
                         reader.snapshot, lambda: reader.deregister(f"o0-{unique}")):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await call()
                assert time.monotonic() - started < 1.0
            assert not await reader.healthy()

            # Consumers fail static: the view keeps the last instances it had.
            await eventually(lambda: _async(view.stale), 5, "view marked stale")
            assert {i.id for i in view.snapshot.service(service)} == ids

            # Down for longer than the TTL, then back.
            await asyncio.sleep(max(0.0, stopped + ttl + 2.0 - time.monotonic()))
            lone_server.start_member(0)

            # The registrar's keepalive hears "unknown lease" and registers everything again.
            await eventually(lambda: _async(
                registrar.reregistrations >= 1 and registrar.lease_id not in (None, old_lease)),
                10, "re-registration")
            new_lease = registrar.lease_id

            def converged(snapshot: Snapshot) -> bool:
                instances = snapshot.service(service)
                return {i.id for i in instances} == ids and all(
                    i.lease == new_lease for i in instances)

            await wait_for(reader, converged, 10)
            await eventually(lambda: _async(not view.stale and converged(view.snapshot)), 10,
                             "view converged")
            assert await reader.healthy()
            assert await reader.lease(str(old_lease)) is None

            async def api_converged() -> bool:
                answer = await http.get("/v1/catalog")
                if answer.status_code != 200:
                    return False
                mine = [i for i in answer.json()["instances"] if i["service"] == service]
                return {i["id"] for i in mine} == ids and all(
                    i["lease"] == new_lease for i in mine)

            await eventually(api_converged, 10, "API converged")
    finally:
        await view.stop()
        await registrar.stop(revoke=False)
        await writer.close()
        await reader.close()


async def _async(value: bool) -> bool:
    return value
