"""py-consul (sync and asyncio) reading a real pilotfish registry, on memory and on etcd."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import consul
import consul.aio
import httpx
import pytest

from tests.consulapi.conftest import Registry, start_registry


def _web(registry: Registry, name: str) -> None:
    """web-1 passing with tags and meta; web-2 on a sidecar's lease, warning; and a db."""
    registry.register(name, f"{name}-1", "127.0.0.11", 8080, tags=["prod", "v1"],
                      meta={"env": "qa", "team": "a"}, weight=5)
    lease = registry.lease("sidecar host-a")
    registry.register(name, f"{name}-2", "127.0.0.12", 8081, lease=lease, tags=["prod"],
                      meta={"env": "live"}, health="warning")
    registry.register(f"{name}-db", f"{name}-db-1", "127.0.0.13", 5432, health="critical")


def test_catalog_and_health_reads(registry: Registry, name: str) -> None:
    _web(registry, name)
    client = consul.Consul(host=registry.host, port=registry.port)

    index, services = client.catalog.services()
    assert int(index) >= 1
    assert services[name] == ["prod", "v1"]
    assert services[f"{name}-db"] == []

    _, nodes = client.catalog.service(name)
    by_id = {n["ServiceID"]: n for n in nodes}
    assert set(by_id) == {f"{name}-1", f"{name}-2"}
    one, two = by_id[f"{name}-1"], by_id[f"{name}-2"]
    assert (one["ServiceName"], one["ServiceAddress"], one["ServicePort"]) == \
        (name, "127.0.0.11", 8080)
    assert one["ServiceTags"] == ["prod", "v1"]
    assert one["ServiceMeta"] == {"env": "qa", "team": "a"}
    assert one["ServiceWeights"] == {"Passing": 5, "Warning": 1}
    assert one["Datacenter"] == "dc1"
    # nodes: the address alone for an instance's own lease, owner + address for a sidecar's
    assert one["Node"] == "127-0-0-11" and one["Address"] == "127.0.0.11"
    assert two["Node"] == "sidecar-host-a-127-0-0-12"
    assert two["NodeMeta"]["pilotfish-owner"] == "sidecar host-a"

    _, entries = client.health.service(name)
    status = {e["Service"]["ID"]: {c["CheckID"]: c["Status"] for c in e["Checks"]}
              for e in entries}
    assert status[f"{name}-1"][f"service:{name}-1"] == "passing"
    assert status[f"{name}-2"][f"service:{name}-2"] == "warning"
    assert all(s["serfHealth"] == "passing" for s in status.values())
    # Traefik pairs /v1/catalog/service and /v1/health/service items by position
    assert [n["ServiceID"] for n in nodes] == [e["Service"]["ID"] for e in entries]
    _, db = client.health.service(f"{name}-db")
    assert [c["Status"] for c in db[0]["Checks"]] == ["passing", "critical"]

    _, nodes_list = client.catalog.nodes()
    names = {n["Node"] for n in nodes_list}
    assert {"127-0-0-11", "sidecar-host-a-127-0-0-12", "127-0-0-13"} <= names

    _, node = client.catalog.node("sidecar-host-a-127-0-0-12")
    assert node["Node"]["Address"] == "127.0.0.12"
    assert set(node["Services"]) == {f"{name}-2"}
    _, missing = client.catalog.node("no-such-node")
    assert missing is None
    _, checks = client.health.checks(name)
    assert {c["ServiceID"]: c["Status"] for c in checks} == \
        {f"{name}-1": "passing", f"{name}-2": "warning"}
    _, warning = client.health.state("warning")
    assert f"service:{name}-2" in {c["CheckID"] for c in warning}
    assert all(c["Status"] == "warning" for c in warning)
    _, critical = client.health.state("critical", filter_expr=f'ServiceName == "{name}-db"')
    assert [c["ServiceID"] for c in critical] == [f"{name}-db-1"]

    assert client.agent.self()["Config"]["Datacenter"] == "dc1"
    assert client.status.leader() == f"{registry.host}:{registry.port}"
    assert client.catalog.datacenters() == ["dc1"]
    _, unknown = client.health.service("no-such-service")
    assert unknown == []


def test_tag_and_passing_filters(registry: Registry, name: str) -> None:
    _web(registry, name)
    client = consul.Consul(host=registry.host, port=registry.port)

    def ids(**kwargs: object) -> set[str]:
        _, entries = client.health.service(name, **kwargs)
        return {e["Service"]["ID"] for e in entries}

    assert ids() == {f"{name}-1", f"{name}-2"}
    assert ids(passing=True) == {f"{name}-1"}  # warning is not passing
    assert ids(tag="prod") == {f"{name}-1", f"{name}-2"}
    assert ids(tag=["prod", "v1"]) == {f"{name}-1"}  # repeated ?tag=: all of them
    assert ids(tag=["prod", "nope"]) == set()
    _, critical = client.health.service(f"{name}-db", passing=True)
    assert critical == []
    _, tagged = client.catalog.service(name, tag="v1")
    assert [n["ServiceID"] for n in tagged] == [f"{name}-1"]


def test_filter_expressions(registry: Registry, name: str) -> None:
    _web(registry, name)
    client = consul.Consul(host=registry.host, port=registry.port)

    def health(expression: str) -> set[str]:
        _, entries = client.health.service(name, filter_expr=expression)
        return {e["Service"]["ID"] for e in entries}

    one, two = f"{name}-1", f"{name}-2"
    assert health('Service.Tags contains "v1"') == {one}
    assert health('"v1" in Service.Tags') == {one}
    assert health('Service.Meta.env == "live"') == {two}
    assert health('Service.Meta["env"] != "live"') == {one}
    assert health('not (Service.Tags contains "v1")') == {two}
    assert health('Service.Meta.env == "qa" and Service.Port == 8080') == {one}
    assert health('Service.Meta.env == "qa" or Checks.Status == "warning"') == {one, two}
    assert health("Service.Meta.missing == `x`") == set()
    assert health('Node.Node matches "^sidecar-"') == {two}
    assert health("Service.Meta is not empty and Service.Tags is not empty") == {one, two}

    _, catalog = client.catalog.service(name, filter_expr='ServiceMeta.team == "a"')
    assert [n["ServiceID"] for n in catalog] == [one]
    _, services = client.catalog.services(filter_expr=f'ServiceName == "{name}-db"')
    assert services == {f"{name}-db": []}
    _, nodes = client.catalog.nodes(filter_expr='Meta["pilotfish-owner"] == "sidecar host-a"')
    assert [n["Node"] for n in nodes] == ["sidecar-host-a-127-0-0-12"]

    for unsupported in ("Service.Port > 1", "Service.Nope == 1", 'Service.Tags == "x"',
                        'Service.Port == "eighty"', "Service.Meta.env ==", "(Service.ID == x"):
        with pytest.raises(consul.ConsulException, match="400"):
            client.health.service(name, filter_expr=unsupported)


async def test_blocking_query_wakes_on_a_change_of_its_answer(registry: Registry,
                                                               name: str) -> None:
    registry.register(name, f"{name}-0", "127.0.0.20", 9000)
    client = consul.aio.Consul(host=registry.host, port=registry.port)
    writes = httpx.AsyncClient(base_url=registry.process.api, timeout=10)
    try:
        index, _ = await client.health.service(name)
        # a change elsewhere in the catalog does not wake this watcher, nor move its index
        other = asyncio.ensure_future(client.health.service(name, index=index, wait="2s"))
        await asyncio.sleep(0.3)
        registry.register(f"{name}-other", f"{name}-other-1", "127.0.0.21", 9000)
        await asyncio.sleep(0.3)
        assert not other.done()
        same, _ = await other
        assert same == index

        delays = []
        for n in range(1, 6):
            pending = asyncio.ensure_future(client.health.service(name, index=index, wait="10s"))
            await asyncio.sleep(0.2)
            assert not pending.done()
            response = await writes.put(f"/v1/services/{name}/instances/{name}-{n}",
                                        json={"address": "127.0.0.20", "port": 9000 + n,
                                              "ttl": 60})
            written = time.monotonic()
            assert response.status_code == 201
            new_index, entries = await pending
            delays.append(time.monotonic() - written)
            assert int(new_index) > int(index)
            assert f"{name}-{n}" in {e["Service"]["ID"] for e in entries}
            index = new_index
        print(f"blocking query woke {[round(d * 1000, 1) for d in delays]} ms after the write")
        assert statistics.median(delays) < 0.05, delays
        assert max(delays) < 0.5, delays
    finally:
        await writes.aclose()
        await client.http.close()


async def test_blocking_query_times_out_at_wait(registry: Registry, name: str) -> None:
    registry.register(name, f"{name}-0", "127.0.0.22", 9000)
    client = consul.aio.Consul(host=registry.host, port=registry.port)
    try:
        index, _ = await client.catalog.service(name)
        started = time.monotonic()
        again, _ = await client.catalog.service(name, index=index, wait="1s")
        elapsed = time.monotonic() - started
        assert again == index
        assert elapsed >= 1.0 and elapsed < 1.0 + 1 / 16 + 0.5, elapsed  # Consul adds up to wait/16
        # an index ahead of the answer (a client of a restarted registry) is answered at once
        started = time.monotonic()
        await client.catalog.service(name, index=int(index) + 1000, wait="5s")
        assert time.monotonic() - started < 1.0
    finally:
        await client.http.close()


def test_headers_and_query_parameters(registry: Registry, name: str) -> None:
    registry.register(name, f"{name}-0", "127.0.0.23", 9000)
    http = registry.http
    for path in ("/v1/catalog/services", f"/v1/catalog/service/{name}",
                 f"/v1/health/service/{name}", "/v1/catalog/nodes", "/v1/catalog/datacenters",
                 f"/v1/health/checks/{name}", "/v1/health/state/any",
                 "/v1/agent/self", "/v1/status/leader"):
        response = http.get(path, params={"stale": "", "dc": "dc1"})
        assert response.status_code == 200, (path, response.text)
        assert int(response.headers["X-Consul-Index"]) >= 1, path
        assert response.headers["X-Consul-KnownLeader"] == "true", path
        assert response.headers["X-Consul-LastContact"] == "0", path
    consistent = http.get(f"/v1/health/service/{name}", params={"consistent": ""})
    assert consistent.headers["X-Consul-Effective-Consistency"] == "consistent"
    assert http.get("/v1/catalog/services", params={"dc": "elsewhere"}).status_code == 500
    assert http.get("/v1/catalog/services", params={"stale": "", "consistent": ""}) \
        .status_code == 400
    for index in ("abc", "-1", "²"):
        bad_index = http.get("/v1/catalog/services", params={"index": index})
        assert bad_index.status_code == 400 and "index" in bad_index.text, index
    assert http.get("/v1/catalog/services", params={"index": "1", "wait": "soon"}) \
        .status_code == 400
    assert http.get("/v1/health/state/bogus").status_code == 400
    # pilotfish's own routes are untouched beside Consul's
    assert http.get("/v1/catalog").status_code == 200
    assert http.get("/v1/health").status_code == 200


def test_pending_blocking_queries_end_when_the_registry_stops(name: str) -> None:
    running = start_registry("memory://")
    try:
        running.register(name, f"{name}-0", "127.0.0.24", 9000)
        client = consul.Consul(host=running.host, port=running.port)
        index, _ = client.health.service(name)
        answers: list[object] = []

        def block() -> None:
            try:
                answers.append(client.health.service(name, index=index, wait="60s"))
            except Exception as exc:  # the connection may close instead of answering
                answers.append(exc)

        waiter = threading.Thread(target=block)
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()
        started = time.monotonic()
        assert running.process.stop() == 0
        waiter.join(10)
        assert not waiter.is_alive()
        assert time.monotonic() - started < 5
        assert answers and not isinstance(answers[0], Exception), answers
    finally:
        running.http.close()
        running.process.stop()
    assert not running.process.crashes(), running.process.crashes()


async def test_a_lapsed_lease_wakes_the_blocking_query_within_a_second(registry: Registry,
                                                                        name: str) -> None:
    registry.register(name, f"{name}-keep", "127.0.0.25", 9000)
    registry.register(name, f"{name}-lapse", "127.0.0.26", 9000, ttl=2)  # no keepalives
    client = consul.aio.Consul(host=registry.host, port=registry.port)
    try:
        index, entries = await client.health.service(name)
        assert len(entries) == 2
        registered = time.monotonic()
        while True:  # blocking queries until the answer no longer has the lapsed instance
            index, entries = await client.health.service(name, index=index, wait="10s")
            if {e["Service"]["ID"] for e in entries} == {f"{name}-keep"}:
                break
            assert time.monotonic() - registered < 5, entries
        assert time.monotonic() - registered < 2 + 1 + 0.5  # architecture.md guarantee 1
    finally:
        await client.http.close()
