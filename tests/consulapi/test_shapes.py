"""Golden tests of Consul's JSON shapes; node derivation, answer indexes, tokens (in-process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.model import Instance
from pilotfish.registry.app import RegistryApi
from pilotfish.registry.consul.blocking import AnswerIndexes
from pilotfish.registry.consul.shapes import derive_node
from tests.consulapi import golden

MAP_FIELDS = {"Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses", "ServiceTaggedAddresses",
              "Tags", "Services"}
"""Objects whose keys are data (the values' types are compared, not the keys)."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"  # JSON has one number type
    return {str: "string", list: "array", dict: "object"}.get(type(value), repr(type(value)))


def assert_like(documented: Any, ours: Any, path: str = "$", is_map: bool = False) -> None:
    """`ours` has every documented field, each of the documented JSON type."""
    if documented is None:
        return  # documented as null: unset, any shape will do
    assert _kind(ours) == _kind(documented), f"{path}: {_kind(ours)}, documented " \
                                             f"{_kind(documented)}"
    if isinstance(documented, dict):
        if is_map or path.rsplit(".", 1)[-1] in MAP_FIELDS:
            if documented and ours:
                example = next(iter(ours.values()))
                for key, value in documented.items():
                    assert_like(value, example, f"{path}[{key}]")
            return
        for key, value in documented.items():
            # Go decodes field names case-insensitively; a documented lower-case key (the
            # ServiceTaggedAddresses example) matches the capitalised one Consul sends
            found = key if key in ours else next(
                (k for k in ours if k.lower() == key and key.islower()), None)
            assert found is not None, f"{path}.{key} missing from {sorted(ours)}"
            assert_like(value, ours[found], f"{path}.{key}")
    elif isinstance(documented, list) and documented and ours:
        for item in documented:
            assert_like(item, ours[0], f"{path}[]")


@pytest.fixture
async def app() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryCatalog]]:
    catalog = MemoryCatalog()
    api = RegistryApi(catalog, token="s3cret")
    transport = httpx.ASGITransport(app=api.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8500") as client:
        yield client, catalog
    await catalog.close()


async def _register(catalog: MemoryCatalog, service: str, instance_id: str, address: str,
                    owner: str = "", **fields: Any) -> Instance:
    lease = await catalog.create_lease(30, owner)
    instance = Instance(service=service, id=instance_id, address=address, port=8000,
                        lease=lease.id, **fields)
    await catalog.register(instance)
    return instance


async def test_every_answer_has_the_documented_fields_and_types(
        app: tuple[httpx.AsyncClient, MemoryCatalog]) -> None:
    client, catalog = app
    await _register(catalog, "redis", "redis-1", "10.1.10.12", owner="host-a",
                    tags=("primary",), meta={"redis_version": "4.0"}, weight=10)
    await _register(catalog, "redis", "redis-2", "fd00::12", tags=("secondary",))

    async def get(path: str) -> Any:
        response = await client.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        return response.json()

    assert_like(golden.CATALOG_SERVICES, await get("/v1/catalog/services"), is_map=True)
    service = await get("/v1/catalog/service/redis")
    assert len(service) == 2
    for documented in golden.CATALOG_SERVICE:
        for ours in service:
            assert_like(documented, ours)
    health = await get("/v1/health/service/redis")
    assert len(health) == 2
    for ours in health:
        assert_like(golden.HEALTH_SERVICE[0], ours)
        for check in ours["Checks"]:
            assert_like(golden.HEALTH_CHECK_EXTRA, check)
    nodes = await get("/v1/catalog/nodes")
    assert len(nodes) == 2
    for ours in nodes:
        assert_like(golden.CATALOG_NODES[0], ours)
    assert_like(golden.AGENT_SELF, await get("/v1/agent/self"))
    assert_like(golden.STATUS_LEADER, await get("/v1/status/leader"))
    assert_like(golden.CATALOG_DATACENTERS, await get("/v1/catalog/datacenters"))
    node = await get(f"/v1/catalog/node/{nodes[0]['Node']}")
    assert_like(golden.CATALOG_NODE, node)
    assert len(node["Services"]) == 1
    for path in ("/v1/health/state/any", "/v1/health/checks/redis"):
        checks = await get(path)
        assert len(checks) == (4 if path.endswith("any") else 2), checks
        for check in checks:
            assert_like(golden.HEALTH_STATE[0], check)
    assert "/v1/health/service/{service}" in (await get("/v1/openapi.json"))["paths"]

    # values carried over from the instance
    (one,) = [s for s in service if s["ServiceID"] == "redis-1"]
    assert (one["ServiceAddress"], one["ServicePort"], one["ServiceTags"]) == \
        ("10.1.10.12", 8000, ["primary"])
    assert one["ServiceWeights"] == {"Passing": 10, "Warning": 1}
    (six,) = [n for n in nodes if n["Address"] == "fd00::12"]
    assert six["TaggedAddresses"]["lan_ipv6"] == "fd00::12"


def test_the_derived_node_is_stable_and_documented() -> None:
    sidecar = derive_node("sidecar host-a", "10.0.0.5")
    assert sidecar.name == "sidecar-host-a-10-0-0-5"
    assert sidecar == derive_node("sidecar host-a", "10.0.0.5")  # same inputs, same node
    assert sidecar.id != derive_node("sidecar host-b", "10.0.0.5").id
    assert sidecar.id != derive_node("sidecar host-a", "10.0.0.6").id
    own = derive_node("instance:web-1", "10.0.0.5")  # an instance's own lease: address only
    assert (own.name, own.owner) == ("10-0-0-5", "")
    assert own == derive_node("instance:web-2", "10.0.0.5")
    assert derive_node("", "fd00::5").name == "fd00-0000-0000-0000-0000-0000-0000-0005"


async def test_an_answers_index_moves_only_when_that_answer_changes(
        app: tuple[httpx.AsyncClient, MemoryCatalog]) -> None:
    client, catalog = app

    async def index(path: str) -> int:
        response = await client.get(path)
        assert response.status_code == 200
        return int(response.headers["X-Consul-Index"])

    web = await _register(catalog, "web", "web-1", "10.0.0.1")
    web_index = await index("/v1/health/service/web")
    services_index = await index("/v1/catalog/services")
    await _register(catalog, "db", "db-1", "10.0.0.2")
    assert await index("/v1/health/service/web") == web_index
    assert await index("/v1/catalog/services") > services_index
    passing = await index("/v1/health/service/web?passing")  # an answer of its own
    await _register(catalog, "db", "db-2", "10.0.0.3")
    assert await index("/v1/health/service/web?passing") == passing
    await catalog.register(Instance(service="web", id="web-1", address="10.0.0.1", port=8000,
                                    lease=web.lease, health="warning"))
    moved = await index("/v1/health/service/web")
    assert moved > web_index
    assert await index("/v1/health/service/web") == moved


def test_answer_indexes_never_go_backwards() -> None:
    answers = AnswerIndexes(limit=2)
    assert answers.index_of("a", b"1", 5) == 5
    assert answers.index_of("a", b"1", 9) == 5
    assert answers.index_of("a", b"2", 3) == 6  # a changed answer from an older catalog index
    answers.index_of("b", b"x", 10)
    answers.index_of("c", b"x", 11)  # "a" is forgotten: it comes back at a fresh index
    assert answers.index_of("a", b"2", 12) == 12


async def test_tokens_are_read_from_consul_headers_and_query(
        app: tuple[httpx.AsyncClient, MemoryCatalog]) -> None:
    client, _ = app
    assert (await client.get("/v1/catalog/services")).status_code == 200  # reads stay open
    good = await client.get("/v1/catalog/services", headers={"X-Consul-Token": "s3cret"})
    assert good.status_code == 200
    assert (await client.get("/v1/catalog/services?token=s3cret")).status_code == 200
    for wrong in ({"headers": {"X-Consul-Token": "nope"}}, {"params": {"token": "nope"}},
                  {"headers": {"Authorization": "Bearer nope"}}):
        response = await client.get("/v1/health/service/web", **wrong)  # type: ignore[arg-type]
        assert response.status_code == 403, wrong
        assert response.text == "ACL not found"
    assert (await client.get("/v1/agent/self",
                             headers={"X-Consul-Token": "nope"})).status_code == 403
