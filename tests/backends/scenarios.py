"""Steps the backend failure tests share; each test file keeps what its backend does differently.

`Churn` is the load a cluster must carry while it loses members: registrars adding new
instances non-stop and a reader sampling the catalog. `Outage` is a registrar and a view
on a single server that is about to go away, with the checks every backend must pass
while it is gone (503 with a clear message, promptly; consumers fail static) and after
it is back (the registrar re-registers, reader, view and API converge).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from pilotfish.catalog import BackendUnavailable, Catalog, Instance, Snapshot, open_catalog
from pilotfish.catalog.view import CatalogView
from pilotfish.registrar.registrar import Registrar
from tests.fixtures.process import PilotfishProcess
from tests.fixtures.watching import eventually, ids, instance, wait_until_back, wait_until_ids

Opener = Callable[[str], Awaitable[Catalog]]


# -- a cluster loses members under load -------------------------------------------------


@dataclass
class ReadLog:
    """What a reader saw while the cluster lost members."""

    samples: int = 0
    errors: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


async def sample_reads(reader: Catalog, service: str, log: ReadLog, stop: asyncio.Event) -> None:
    """Read every 20 ms: instances are only ever added, so none may vanish."""
    while not stop.is_set():
        try:
            snapshot = await reader.snapshot()
        except BackendUnavailable as exc:
            log.errors.append(str(exc))
        else:
            present = ids(snapshot, service)
            log.vanished.extend(sorted(log.seen - present))
            log.seen |= present
            log.samples += 1
        await asyncio.sleep(0.02)


async def add_until_done(registrar: Registrar, added: Instance, deadline: float,
                         retry_every: float) -> int:
    """Register like a sidecar does: retry while the backend is unavailable; returns retries."""
    retries = 0
    while True:
        try:
            await registrar.add(added)
            return retries
        except BackendUnavailable:
            retries += 1
            assert time.monotonic() < deadline, f"{added.id} never registered"
            await asyncio.sleep(retry_every)


class Churn:
    """Three registrars on two writer catalogs adding instances non-stop, and a reader sampling.

    Use as `async with`: entering starts the registrars (their leases are remembered)
    and both loops; `finish()` stops the loops; leaving stops the registrars without
    revoking.
    """

    def __init__(self, writers: Sequence[Catalog], reader: Catalog, service: str, unique: str,
                 ttl: int, owner: str, pause: float, retry_every: float) -> None:
        self.writers = writers
        self.reader = reader
        self.service = service
        self.unique = unique
        self.pause = pause
        self.retry_every = retry_every
        self.registrars = [Registrar(writers[n % 2], ttl=ttl, owner=f"{owner}-{n}")
                           for n in range(3)]
        self.leases: list[str | None] = []
        self.reads = ReadLog()
        self.registered: list[str] = []
        self.retries = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Churn:
        for registrar in self.registrars:
            await registrar.start()
        self.leases = [r.lease_id for r in self.registrars]
        self._tasks = [
            asyncio.create_task(sample_reads(self.reader, self.service, self.reads, self._stop)),
            asyncio.create_task(self._keep_registering()),
        ]
        return self

    async def _keep_registering(self) -> None:
        n = 0
        while not self._stop.is_set():
            added = instance(self.service, f"i{n}-{self.unique}", 20000 + n)
            self.retries += await add_until_done(self.registrars[n % 3], added,
                                                 time.monotonic() + 15, self.retry_every)
            self.registered.append(added.id)
            n += 1
            await asyncio.sleep(self.pause)

    @property
    def writing(self) -> bool:
        """Whether registrations are still going (the loop has not failed)."""
        return not self._tasks[1].done()

    async def finish(self) -> None:
        """Stop both loops and wait for them (raising what either raised)."""
        self._stop.set()
        sampler, writing = self._tasks
        await asyncio.wait_for(writing, 20)
        await sampler

    async def assert_nothing_lost(self) -> None:
        """No live instance vanished from reads, and keepalives carried every lease through:
        the same leases, never re-registered, and each still accepts a keepalive."""
        assert self.reads.vanished == [], (
            f"live instances vanished from reads: {self.reads.vanished[:5]}")
        assert [r.lease_id for r in self.registrars] == self.leases
        assert all(r.reregistrations == 0 for r in self.registrars)
        for registrar in self.registrars:
            assert registrar.lease_id is not None
            await self.writers[0].keepalive(registrar.lease_id)

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for registrar in self.registrars:
            await registrar.stop(revoke=False)


# -- the only server is down for longer than a TTL --------------------------------------


@dataclass
class Outage:
    """A registrar keeping three instances on one catalog, a view following them on another."""

    service: str
    names: list[str]
    writer: Catalog
    reader: Catalog
    registrar: Registrar
    view: CatalogView
    old_lease: str = ""

    @property
    def expected(self) -> set[str]:
        """The ids of the registrar's instances."""
        return set(self.names)

    def on_lease(self, lease: str | None) -> Callable[[Snapshot], bool]:
        """Predicate: exactly the expected instances, every one on `lease`."""

        def holds(snapshot: Snapshot) -> bool:
            mine = snapshot.service(self.service)
            return {i.id for i in mine} == self.expected and all(i.lease == lease for i in mine)

        return holds


@asynccontextmanager
async def registered_and_viewed(url: str, unique: str, ttl: int,
                                opener: Opener = open_catalog) -> AsyncIterator[Outage]:
    """Start a registrar (ttl) with o0..o2 of out-{unique} and a view; wait until both show
    them; stop and close everything on the way out."""
    service = f"out-{unique}"
    writer = await opener(url)
    reader = await opener(url)
    names = [f"o{n}-{unique}" for n in range(3)]
    registrar = Registrar(writer, ttl=ttl, owner="outage",
                          instances=[instance(service, name, 21000 + n)
                                     for n, name in enumerate(names)])
    outage = Outage(service, names, writer, reader, registrar,
                    CatalogView(reader, wait=5.0, retry=0.2))
    try:
        await registrar.start()
        assert registrar.lease_id is not None
        outage.old_lease = registrar.lease_id
        await outage.view.start()
        await wait_until_ids(reader, service, outage.expected, 5)
        await eventually(lambda: ids(outage.view.snapshot, service) == outage.expected, 5,
                         "view filled")
        yield outage
    finally:
        await outage.view.stop()
        await registrar.stop(revoke=False)
        await writer.close()
        await reader.close()


async def start_long_poll(http: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    """A 30 s blocking read of /v1/catalog at its current index, parked on the catalog."""
    first = await http.get("/v1/catalog")
    assert first.status_code == 200
    blocked = asyncio.create_task(http.get(
        "/v1/catalog", params={"index": first.json()["index"], "wait": "30s"}))
    await asyncio.sleep(0.3)
    return blocked


def assert_unavailable(answer: httpx.Response, says: str, what: object = None) -> None:
    """A 503 "unavailable" answer whose message names the backend: it starts
    "registry backend unavailable: " + says."""
    assert answer.status_code == 503, (what, answer.text)
    error = answer.json()
    assert error["code"] == "unavailable"
    assert error["error"].startswith(f"registry backend unavailable: {says}"), error


async def assert_long_poll_ends(blocked: asyncio.Task[httpx.Response], stopped: float,
                                says: str) -> None:
    """The blocking read ends in 503 within 4 s of the server's death instead of hanging."""
    answer = await asyncio.wait_for(blocked, 8)
    assert_unavailable(answer, says, "long-poll")
    assert time.monotonic() - stopped < 4


async def assert_api_unavailable(http: httpx.AsyncClient, outage: Outage, says: str,
                                 within: float,
                                 more: Sequence[tuple[str, str, Any]] = ()) -> None:
    """Reads and writes through the API (catalog, a lease, a keepalive, and `more`):
    503 with a clear message, each within `within` seconds."""
    for method, path, body in (("GET", "/v1/catalog", None),
                               ("POST", "/v1/leases", {"ttl": 10}),
                               ("PUT", f"/v1/leases/{outage.old_lease}/keepalive", None),
                               *more):
        started = time.monotonic()
        answer = await http.request(method, path, json=body)
        assert_unavailable(answer, says, (method, path))
        assert time.monotonic() - started < within, (method, path)


async def assert_catalog_unavailable(
    outage: Outage, within: float, more: Sequence[Callable[[], Awaitable[object]]] = ()
) -> None:
    """The catalog itself (a lease, a keepalive, a snapshot, a deregister, and `more`) raises
    BackendUnavailable, each within `within` seconds, and reports itself unhealthy."""
    reader, writer, old_lease = outage.reader, outage.writer, outage.old_lease
    for call in (lambda: reader.create_lease(10), lambda: writer.keepalive(old_lease),
                 reader.snapshot, lambda: reader.deregister(outage.names[0]), *more):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await call()
        assert time.monotonic() - started < within
    assert not await reader.healthy()


async def assert_view_fails_static(outage: Outage) -> None:
    """Consumers fail static: the view turns stale and keeps the instances it last had."""
    await eventually(lambda: outage.view.stale, 5, "view marked stale")
    assert ids(outage.view.snapshot, outage.service) == outage.expected


async def reregistered(outage: Outage, within: float) -> str:
    """Wait until the registrar's keepalive heard "unknown lease" and registered everything
    again on a new lease; returns that lease."""
    registrar = outage.registrar
    await eventually(lambda: registrar.reregistrations >= 1
                     and registrar.lease_id not in (None, outage.old_lease),
                     within, "re-registration on UnknownLease")
    assert registrar.lease_id is not None
    return registrar.lease_id


async def wait_api_shows(http: httpx.AsyncClient, api: PilotfishProcess, outage: Outage,
                         lease: str | None = None, timeout: float = 10) -> None:
    """Poll the API until it serves exactly the expected instances (all on `lease`, if
    given); fail with its last answer and log."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await http.get("/v1/catalog")
        mine = [i for i in answer.json()["instances"] if i["service"] == outage.service
                ] if answer.status_code == 200 else []
        if {i["id"] for i in mine} == outage.expected and (
                lease is None or all(i["lease"] == lease for i in mine)):
            return
        assert time.monotonic() < deadline, (
            f"API did not converge: {answer.status_code} {answer.text[:500]}\n"
            + "".join(api.lines[-20:]))
        await asyncio.sleep(0.1)


async def assert_everything_recovers(http: httpx.AsyncClient, api: PilotfishProcess,
                                     outage: Outage, within: float) -> None:
    """After the backend is back: the registrar hears "unknown lease" and registers again,
    the reader (riding out its own reconnect) and the view converge on the new lease, the
    catalog is healthy, the old lease is gone, and the API serves the new instances."""
    new_lease = await reregistered(outage, within)
    converged = outage.on_lease(new_lease)
    await wait_until_back(outage.reader, converged, 10)
    await eventually(lambda: not outage.view.stale and converged(outage.view.snapshot), 10,
                     "view converged")
    assert await outage.reader.healthy()
    # etcd revokes a lease that lapsed in the outage once the registrar has moved (2 s)
    await eventually(lambda: _gone(outage.reader, outage.old_lease), 8, "old lease revoked")
    await wait_api_shows(http, api, outage, new_lease)


@dataclass(frozen=True)
class Server:
    """How an outage test stops and restarts the backend's only server."""

    kill: Callable[[], None]
    start: Callable[[], None]
    says: str  # how 503 messages name the backend


async def ride_out_an_outage(
    http: httpx.AsyncClient, api: PilotfishProcess, outage: Outage, server: Server, *,
    down_for: float, api_within: float, catalog_within: float, recover_within: float,
    api_more: Sequence[tuple[str, str, Any]] = (),
    catalog_more: Sequence[Callable[[], Awaitable[object]]] = (),
) -> None:
    """Kill the backend's only server, check every consumer reports it promptly, restart it
    after `down_for` seconds, and check everything recovers."""
    await wait_api_shows(http, api, outage, timeout=5)
    blocked = await start_long_poll(http)

    server.kill()
    stopped = time.monotonic()

    # A long-poll waiting on the catalog ends in 503 instead of hanging for 30 s.
    await assert_long_poll_ends(blocked, stopped, server.says)
    # Every kind of API call: 503 with a clear message, promptly; so does the health check.
    await assert_api_unavailable(http, outage, server.says, within=api_within, more=api_more)
    assert (await http.get("/v1/health")).status_code == 503
    # The catalog itself: BackendUnavailable promptly, never a hang.
    await assert_catalog_unavailable(outage, within=catalog_within, more=catalog_more)
    # Consumers fail static: the view keeps the instances it last had.
    await assert_view_fails_static(outage)

    await asyncio.sleep(max(0.0, stopped + down_for - time.monotonic()))
    server.start()

    # The registrar's keepalive hears "unknown lease" and registers everything again.
    await assert_everything_recovers(http, api, outage, recover_within)
    assert (await http.get("/v1/health")).status_code == 200


async def _gone(catalog: Catalog, lease_id: str) -> bool:
    return await catalog.lease(lease_id) is None
