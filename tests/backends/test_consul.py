"""The Consul HTTP API double against Consul's documented behaviour, and the consul:// backend
under an outage.

CI has no Consul binary, so the contract suite runs the consul:// backend against
`tests/fixtures/consul_double.py`. These tests pin the double to what Consul documents for the
endpoints the backend uses (TTL checks, DeregisterCriticalServiceAfter, blocking queries,
KV check-and-set), check that registrations are ordinary Consul services, and stop the
double (a crash: state is lost, as with an agent and server without persistence) to
check that calls fail promptly with BackendUnavailable and that registrars and views
recover once it is back.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pilotfish.catalog import Instance, open_catalog
from tests.backends.scenarios import (
    Server,
    registered_and_viewed,
    ride_out_an_outage,
)
from tests.fixtures.consul import ConsulDouble
from tests.fixtures.process import StartPilotfish


@pytest.fixture
async def http(consul_double: ConsulDouble) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on the private double."""
    async with httpx.AsyncClient(base_url=consul_double.http, timeout=15) as client:
        yield client


def ttl_service(name: str, service_id: str, ttl: str = "1s", deregister: str | None = None,
                status: str | None = "passing") -> dict[str, Any]:
    check: dict[str, Any] = {"CheckID": f"check-{service_id}", "TTL": ttl}
    if deregister:
        check["DeregisterCriticalServiceAfter"] = deregister
    if status:
        check["Status"] = status
    return {"Name": name, "ID": service_id, "Address": "127.0.0.1", "Port": 8080,
            "Tags": ["v1"], "Meta": {"k": "v"}, "Weights": {"Passing": 3, "Warning": 1},
            "Check": check}


async def check_status(http: httpx.AsyncClient, check_id: str) -> str | None:
    checks = (await http.get("/v1/agent/checks")).json()
    return checks[check_id]["Status"] if check_id in checks else None


# -- the double follows Consul's documented behaviour -----------------------------------


async def test_ttl_check_turns_critical_unless_passed(http: httpx.AsyncClient) -> None:
    answer = await http.put("/v1/agent/service/register", json=ttl_service("ttl", "t1", "1s"))
    assert answer.status_code == 200, answer.text
    assert await check_status(http, "check-t1") == "passing"
    for _ in range(3):  # passing within the TTL keeps it passing
        await asyncio.sleep(0.6)
        assert (await http.put("/v1/agent/check/pass/check-t1")).status_code == 200
        assert await check_status(http, "check-t1") == "passing"
    await asyncio.sleep(1.3)
    checks = (await http.get("/v1/agent/checks")).json()
    assert checks["check-t1"]["Status"] == "critical"
    assert checks["check-t1"]["Output"].startswith("TTL expired")
    # The health endpoint reports it too, and ?passing leaves it out.
    entries = (await http.get("/v1/health/service/ttl")).json()
    assert [c["Status"] for c in entries[0]["Checks"]] == ["passing", "critical"]
    assert (await http.get("/v1/health/service/ttl", params={"passing": "1"})).json() == []
    # A pass brings a TTL check back (Consul does not remember it lapsed).
    await http.put("/v1/agent/check/pass/check-t1", params={"note": "back"})
    assert await check_status(http, "check-t1") == "passing"


async def test_checks_start_critical_without_a_status(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", json=ttl_service("init", "i1", status=None))
    assert await check_status(http, "check-i1") == "critical"


async def test_unknown_check_and_service_are_404(http: httpx.AsyncClient) -> None:
    answer = await http.put("/v1/agent/check/pass/nope")
    assert answer.status_code == 404 and "Unknown check ID" in answer.text
    assert (await http.put("/v1/agent/service/deregister/nope")).status_code == 404
    assert (await http.get("/v1/agent/service/nope")).status_code == 404


async def test_registration_keys_are_case_insensitive(http: httpx.AsyncClient) -> None:
    # py-consul sends lower-case keys; Consul's JSON decoding matches them regardless.
    body = {"name": "lower", "id": "l1", "port": 81, "meta": {"a": "b"},
            "checks": [{"checkid": "check-l1", "ttl": "5s", "status": "passing"}]}
    assert (await http.put("/v1/agent/service/register", json=body)).status_code == 200
    service = (await http.get("/v1/agent/service/l1")).json()
    assert (service["Service"], service["Port"], service["Meta"]) == ("lower", 81, {"a": "b"})
    assert await check_status(http, "check-l1") == "passing"


async def test_invalid_meta_is_refused(http: httpx.AsyncClient) -> None:
    body = ttl_service("meta", "m1")
    body["Meta"] = {"consul-x": "reserved"}
    answer = await http.put("/v1/agent/service/register", json=body)
    assert answer.status_code == 400 and "reserved" in answer.text
    body["Meta"] = {f"k{n}": "v" for n in range(65)}
    assert (await http.put("/v1/agent/service/register", json=body)).status_code == 400


@pytest.mark.slow
async def test_deregister_critical_service_after(http: httpx.AsyncClient) -> None:
    # This double reaps every 0.5 s and takes a 1 s DeregisterCriticalServiceAfter
    # (Consul: reaper every 30 s, values below 1 m raised to 1 m).
    await http.put("/v1/agent/service/register",
                   json=ttl_service("reap", "r1", ttl="1s", deregister="1s"))
    await http.put("/v1/agent/service/register", json=ttl_service("reap", "r2", ttl="30s",
                                                                 deregister="1s"))
    started = time.monotonic()
    while "r1" in (await http.get("/v1/agent/services")).json():
        assert time.monotonic() - started < 4.0, "critical service never reaped"
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started
    assert elapsed >= 2.0  # 1 s TTL, then critical for longer than 1 s
    assert await check_status(http, "check-r1") is None  # its checks go with it
    services = (await http.get("/v1/agent/services")).json()
    assert "r2" in services  # still passing: never reaped
    assert (await http.get("/v1/catalog/services")).json()["reap"] == ["v1"]


@pytest.mark.slow
async def test_deregister_after_is_raised_to_consuls_minimum() -> None:
    with ConsulDouble(reap_interval=0.2, min_deregister_after=60.0) as double:
        async with httpx.AsyncClient(base_url=double.http, timeout=10) as client:
            await client.put("/v1/agent/service/register",
                             json=ttl_service("floor", "f1", ttl="1s", deregister="1s"))
            await asyncio.sleep(2.5)
            assert await check_status(client, "check-f1") == "critical"
            assert "f1" in (await client.get("/v1/agent/services")).json()


async def test_blocking_query_returns_on_change(http: httpx.AsyncClient) -> None:
    first = await http.get("/v1/health/service/block")
    index = int(first.headers["X-Consul-Index"])
    assert first.json() == [] and index >= 1
    started = time.monotonic()
    waiting = asyncio.create_task(http.get("/v1/health/service/block",
                                           params={"index": index, "wait": "10s"}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await http.put("/v1/agent/service/register", json=ttl_service("block", "b1", ttl="30s"))
    answer = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 2.0
    assert int(answer.headers["X-Consul-Index"]) > index
    assert [e["Service"]["ID"] for e in answer.json()] == ["b1"]
    # Writes to other services do not wake a watcher of this one.
    index = int(answer.headers["X-Consul-Index"])
    waiting = asyncio.create_task(http.get("/v1/health/service/block",
                                           params={"index": index, "wait": "1s"}))
    await http.put("/v1/agent/service/register", json=ttl_service("other", "o1", ttl="30s"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await asyncio.wait_for(waiting, 3)


async def test_blocking_query_times_out_with_the_same_index(http: httpx.AsyncClient) -> None:
    index = (await http.get("/v1/catalog/services")).headers["X-Consul-Index"]
    started = time.monotonic()
    answer = await http.get("/v1/catalog/services", params={"index": index, "wait": "1s"})
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0  # the whole wait
    assert elapsed < 1.0 + 1.0 / 16 + 0.5  # plus at most wait/16 jitter
    assert answer.status_code == 200
    assert answer.headers["X-Consul-Index"] == index
    assert "consul" in answer.json()
    # A bad wait is refused like Consul refuses it.
    assert (await http.get("/v1/catalog/services",
                           params={"index": index, "wait": "soon"})).status_code == 400


async def test_kv_check_and_set_and_blocking(http: httpx.AsyncClient) -> None:
    missing = await http.get("/v1/kv/p/a")
    assert missing.status_code == 404 and int(missing.headers["X-Consul-Index"]) >= 1
    assert (await http.put("/v1/kv/p/a", params={"cas": 0}, content=b"one")).json() is True
    assert (await http.put("/v1/kv/p/a", params={"cas": 0}, content=b"two")).json() is False
    entry = (await http.get("/v1/kv/p/a")).json()[0]
    assert base64.b64decode(entry["Value"]) == b"one"
    stale = entry["ModifyIndex"] - 1
    assert (await http.put("/v1/kv/p/a", params={"cas": stale}, content=b"x")).json() is False
    assert (await http.put("/v1/kv/p/a", params={"cas": entry["ModifyIndex"]},
                           content=b"two")).json() is True
    listing = await http.get("/v1/kv/p/", params={"recurse": "1"})
    index = int(listing.headers["X-Consul-Index"])
    waiting = asyncio.create_task(http.get("/v1/kv/p/", params={"recurse": "1", "index": index,
                                                                 "wait": "10s"}))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert (await http.delete("/v1/kv/p/a")).json() is True
    gone = await asyncio.wait_for(waiting, 5)
    assert gone.status_code == 404 and int(gone.headers["X-Consul-Index"]) > index


# -- the backend's registrations are ordinary Consul services ---------------------------


async def test_registrations_are_ordinary_consul_services(consul_double: ConsulDouble,
                                                          http: httpx.AsyncClient) -> None:
    catalog = await open_catalog(consul_double.url(deregister_after="5"))
    try:
        lease = await catalog.create_lease(30, owner="test")
        await catalog.register(Instance(service="web", id="web-1", address="127.0.0.1",
                                        port=8080, lease=lease.id, tags=("blue",),
                                        meta={"zone": "a"}, weight=7))
        assert (await http.get("/v1/catalog/services")).json()["web"] == ["blue"]
        entry = (await http.get("/v1/health/service/web", params={"passing": "1"})).json()[0]
        service = entry["Service"]
        assert (service["ID"], service["Address"], service["Port"]) == ("web-1", "127.0.0.1",
                                                                         8080)
        assert service["Weights"]["Passing"] == 7
        assert service["Meta"] == {"zone": "a", "pilotfish-lease": lease.id}
        check = next(c for c in entry["Checks"] if c["ServiceID"] == "web-1")
        assert check["CheckID"] == "pilotfish:web-1" and check["Status"] == "passing"
        kv = (await http.get(f"/v1/kv/pilotfish/leases/{lease.id}")).json()[0]
        assert b'"owner": "test"' in base64.b64decode(kv["Value"])
        # Consul's own TTL check turns critical if nobody keeps the lease alive.
        await catalog.revoke(lease.id)
        assert "web-1" not in (await http.get("/v1/agent/services")).json()
    finally:
        await catalog.close()


@pytest.mark.slow
async def test_keepalive_passes_consuls_ttl_checks(consul_double: ConsulDouble,
                                                   http: httpx.AsyncClient) -> None:
    catalog = await open_catalog(consul_double.url())
    try:
        lease = await catalog.create_lease(2)
        for n in range(3):
            await catalog.register(Instance(service="kept", id=f"kept-{n}", address="127.0.0.1",
                                            port=80 + n, lease=lease.id))
        for _ in range(5):  # 3.5 s, well past the 2 s TTL of Consul's checks
            await asyncio.sleep(0.7)
            await catalog.keepalive(lease.id)
            for n in range(3):
                assert await check_status(http, f"pilotfish:kept-{n}") == "passing"
        passing = (await http.get("/v1/health/service/kept", params={"passing": "1"})).json()
        assert len(passing) == 3  # what Consul DNS would serve
    finally:
        await catalog.close()


@pytest.mark.slow
async def test_a_lapsed_lease_leaves_nothing_behind_in_consul(consul_double: ConsulDouble,
                                                              http: httpx.AsyncClient) -> None:
    catalog = await open_catalog(consul_double.url())
    try:
        lease = await catalog.create_lease(2)
        await catalog.register(Instance(service="gone", id="gone-1", address="127.0.0.1",
                                        port=80, lease=lease.id))
        started = time.monotonic()
        while True:  # the TTL check lapses, and the backend tidies KV and the agent
            services = (await http.get("/v1/agent/services")).json()
            record = await http.get(f"/v1/kv/pilotfish/leases/{lease.id}")
            if "gone-1" not in services and record.status_code == 404:
                break
            assert time.monotonic() - started < 6, (services, record.status_code)
            await asyncio.sleep(0.2)
        assert catalog.expirations >= 1
    finally:
        await catalog.close()


# -- outage: the double crashes and comes back empty ----------------------------------


@pytest.mark.slow
async def test_outage_longer_than_a_ttl(consul_double: ConsulDouble, pilotfish: StartPilotfish,
                                        unique: str) -> None:
    ttl = 2
    url = consul_double.url()
    api = pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0")
    async with (registered_and_viewed(url, unique, ttl) as outage,
                httpx.AsyncClient(base_url=api.api, timeout=15) as client):
        # Down longer than the TTL; the double comes back empty, like an agent and server
        # without persistence.
        server = Server(kill=lambda: consul_double.stop(signal.SIGKILL),
                        start=consul_double.start, says="consul at ")
        await ride_out_an_outage(client, api, outage, server, down_for=ttl + 1.0,
                                 api_within=2.0, catalog_within=1.0, recover_within=10)
