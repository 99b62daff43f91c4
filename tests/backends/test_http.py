"""The http:// backend against real registry API processes: restarts, tokens, and its cache."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from pilotfish.catalog import BackendUnavailable, Instance, open_catalog
from pilotfish.catalog.backends.http import HttpCatalog, Unauthorized
from pilotfish.catalog.view import CatalogView
from pilotfish.registrar.registrar import Registrar
from tests.fixtures.process import StartPilotfish
from tests.fixtures.watching import wait_until, wait_until_back

PROMPT = 1.0  # seconds within which a call to a dead API must fail


def instance(service: str, instance_id: str, lease: str = "unset", port: int = 9000) -> Instance:
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=port, lease=lease)


def memory_api(pilotfish: StartPilotfish, *extra: str, listen: str = "127.0.0.1:0") -> str:
    return pilotfish("registry", "--registry", "memory://", "--api", listen, *extra).api


@pytest.mark.slow
async def test_registry_restart_reconverges_within_one_keepalive_interval(
    pilotfish: StartPilotfish, unique: str
) -> None:
    first = pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0")
    url = first.api
    writer = await open_catalog(url)
    reader = await open_catalog(url)
    view = CatalogView(reader, wait=5, retry=0.1)
    registrar = Registrar(writer, ttl=3, owner=f"sidecar-{unique}")
    service = f"rs-{unique}"
    try:
        await registrar.start()
        for n in range(3):
            await registrar.add(instance(service, f"r{n}-{unique}", port=9000 + n))
        before = await wait_until(reader, lambda s: len(s.service(service)) == 3, 5)
        await view.start()
        assert len(view.snapshot.service(service)) == 3
        old_lease = registrar.lease_id
        assert old_lease is not None

        first.stop(signal.SIGKILL)

        # Writes fail at once, reads as soon as the long-poll notices (it is always parked).
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await writer.keepalive(old_lease)
        with pytest.raises(BackendUnavailable):
            await writer.create_lease(5)
        with pytest.raises(BackendUnavailable):
            await writer.register(instance(service, f"late-{unique}", old_lease))
        assert time.monotonic() - started < PROMPT
        deadline = time.monotonic() + PROMPT
        while True:
            try:
                await reader.snapshot()
            except BackendUnavailable:
                break
            assert time.monotonic() < deadline, "reads still served from a dead API"
            await asyncio.sleep(0.02)
        assert not await reader.healthy()
        await asyncio.sleep(0.3)
        assert view.stale  # consumers fail static: the last view is kept
        assert len(view.snapshot.service(service)) == 3

        # A new, empty registry on the same port: the registrar is told its lease is unknown,
        # registers again, and readers converge within one keepalive interval.
        second = pilotfish("registry", "--registry", "memory://", "--api",
                           first.listening["registry API"])
        assert second.api == url
        restarted = time.monotonic()
        after = await wait_until_back(
            reader,
            lambda s: len(s.service(service)) == 3
            and {i.lease for i in s.service(service)} == {registrar.lease_id},
            registrar.interval + 3,
        )
        converged = time.monotonic() - restarted
        print(f"converged {converged:.2f}s after the restart (keepalive every "
              f"{registrar.interval:g}s)")
        assert converged <= registrar.interval + 0.5, f"converged after {converged:.2f}s"
        assert registrar.reregistrations == 1
        assert registrar.lease_id != old_lease
        assert after.index > before.index  # the local index never goes backwards
        assert await reader.healthy()
        for _ in range(50):
            if not view.stale and view.snapshot.index >= after.index:
                break
            await asyncio.sleep(0.05)
        assert not view.stale
        assert {i.lease for i in view.snapshot.service(service)} == {registrar.lease_id}
    finally:
        await view.stop()
        await registrar.stop()
        await writer.close()
        await reader.close()


async def test_token_protected_api_refuses_writes_without_the_token(
    pilotfish: StartPilotfish, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PILOTFISH_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    url = memory_api(pilotfish, "--token-file", str(token_file))

    async with httpx.AsyncClient(base_url=url, timeout=5) as raw:
        refused = await raw.post("/v1/leases", json={"ttl": 5})
        assert refused.status_code == 401
        assert refused.json()["code"] == "unauthorized"
        assert (await raw.get("/v1/catalog")).status_code == 200  # reads stay open

    anonymous = await open_catalog(url)
    wrong = await open_catalog(url + "?token=not-it")
    authorized = await open_catalog(url + "?token=s3cret-token")
    monkeypatch.setenv("PILOTFISH_TOKEN", "s3cret-token")
    from_env = await open_catalog(url)
    try:
        with pytest.raises(Unauthorized):
            await anonymous.create_lease(5)
        with pytest.raises(Unauthorized):
            await wrong.create_lease(5)
        lease = await authorized.create_lease(5, owner="ci")
        with pytest.raises(Unauthorized):
            await anonymous.register(instance(f"tk-{unique}", f"t-{unique}", lease.id))
        assert await authorized.register(instance(f"tk-{unique}", f"t-{unique}", lease.id))
        seen = await wait_until(anonymous, lambda s: s.get(f"t-{unique}") is not None, 5)
        assert seen.get(f"t-{unique}") == instance(f"tk-{unique}", f"t-{unique}", lease.id)
        with pytest.raises(Unauthorized):
            await anonymous.keepalive(lease.id)
        assert (await from_env.keepalive(lease.id)).id == lease.id
        assert await from_env.deregister(f"t-{unique}") is not None
        await wait_until(anonymous, lambda s: s.get(f"t-{unique}") is None, 5)
        assert await authorized.revoke(lease.id)
    finally:
        for catalog in (anonymous, wrong, authorized, from_env):
            await catalog.close()


async def test_snapshots_come_from_the_cache_not_the_network(
    pilotfish: StartPilotfish, unique: str
) -> None:
    url = memory_api(pilotfish)
    catalog = await open_catalog(url)
    try:
        lease = await catalog.create_lease(30)
        await catalog.register(instance(f"ca-{unique}", f"c-{unique}", lease.id))
        await wait_until(catalog, lambda s: s.get(f"c-{unique}") is not None, 5)
        before = await _requests_served(url)
        started = time.monotonic()
        for _ in range(10_000):
            await catalog.snapshot()
        elapsed = time.monotonic() - started
        assert await _requests_served(url) - before == 1  # only the /metrics read itself
        assert elapsed < 1.0
    finally:
        await catalog.close()


async def _requests_served(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        text = (await client.get("/metrics")).text
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("pilotfish_http_requests_total{"))


async def test_deregister_finds_the_service_of_an_instance_it_did_not_register(
    http_url: str, unique: str
) -> None:
    owner = await open_catalog(http_url)
    other = await open_catalog(http_url)  # never registered it, never read the catalog
    try:
        lease = await owner.create_lease(30)
        await owner.register(instance(f"dg-{unique}", f"d-{unique}", lease.id))
        removed = await other.deregister(f"d-{unique}")
        assert removed is not None and removed.service == f"dg-{unique}"
        assert await other.deregister(f"d-{unique}") is None
        await wait_until(owner, lambda s: s.get(f"d-{unique}") is None, 5)
        await owner.revoke(lease.id)
    finally:
        await owner.close()
        await other.close()


async def test_url_forms() -> None:
    catalog = await HttpCatalog.from_url("http://127.0.0.1:1/base/?token=t")
    try:
        assert catalog.base_url == "http://127.0.0.1:1/base"
    finally:
        await catalog.close()
    with pytest.raises(ValueError, match="unknown parameter"):
        await HttpCatalog.from_url("http://127.0.0.1:1?tokn=t")
    with pytest.raises(ValueError, match="HOST:PORT"):
        await HttpCatalog.from_url("http:///v1")


async def test_unreachable_api_fails_promptly() -> None:
    catalog = await open_catalog("http://127.0.0.1:9")  # discard port: nothing listens
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await catalog.snapshot()
        with pytest.raises(BackendUnavailable):
            await catalog.keepalive("whatever")
        assert not await catalog.healthy()
        assert time.monotonic() - started < PROMPT
    finally:
        await catalog.close()
