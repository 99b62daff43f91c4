"""Intentions: the precedence that decides a connection, and the API that changes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.model import InvalidField
from pilotfish.http.acl import AccessPolicy
from pilotfish.mesh.intentions import Intention, Intentions, stored
from pilotfish.registry.app import RegistryApi

ACL = """default_read = false
[[token]]
name = "reader"
secret = "reader-secret"
scopes = ["read", "write:*"]
[[token]]
name = "ops"
secret = "ops-secret-1"
scopes = ["admin"]
"""
OPS = {"Authorization": "Bearer ops-secret-1"}
READER = {"Authorization": "Bearer reader-secret"}


def test_the_most_specific_destination_then_source_decides() -> None:
    rules = Intentions((
        Intention("*", "*", "allow"),
        Intention("*", "db", "deny"),
        Intention("web", "db", "allow"),
        Intention("web-*", "*", "deny"),
        Intention("web-canary", "db", "deny"),
        Intention("pay-*", "pay-db", "allow"),
        Intention("pay-legacy-*", "pay-db", "deny"),
    ), default="deny")
    assert rules.allows("web", "db")
    assert not rules.allows("api", "db")  # * -> db deny beats * -> * allow
    assert not rules.allows("web-canary", "db")
    assert not rules.allows("web-x", "db")  # the destination's specificity comes first
    assert not rules.allows("web-x", "cache")  # web-* -> * deny beats * -> *
    assert rules.allows("api", "cache")
    assert rules.allows("pay-new", "pay-db")
    assert not rules.allows("pay-legacy-1", "pay-db")  # the longer prefix wins
    assert Intentions().allows("a", "b") is False  # deny by default
    assert Intentions(default="allow").allows("a", "b") is True


def test_malformed_intentions_are_refused_or_deny_everything_when_stored() -> None:
    for bad, field in [({"default": "maybe"}, "default"),
                       ({"intentions": [{"source": "a", "destination": "b"}]},
                        "intentions[0].action"),
                       ({"intentions": [{"source": "A B", "destination": "b",
                                         "action": "allow"}]}, "intentions[0].source"),
                       ({"intentions": [{"source": "a", "destination": "b", "action": "allow"},
                                        {"source": "a", "destination": "b", "action": "deny"}]},
                        "intentions"),
                       ({"rules": []}, "rules")]:
        with pytest.raises(InvalidField) as refused:
            Intentions.from_value(bad)
        assert refused.value.field == field
    broken = stored({"default": "allow", "intentions": "nonsense"}, 7)
    assert broken.version == 7 and not broken.allows("a", "b")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "acl.toml").write_text(ACL)
    catalog = MemoryCatalog()
    registry = RegistryApi(catalog, access=AccessPolicy(str(tmp_path / "acl.toml")))
    transport = httpx.ASGITransport(app=registry.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http
    await catalog.close()


async def test_admins_change_intentions_and_readers_only_read(client: httpx.AsyncClient) -> None:
    empty = await client.get("/v1/intentions", headers=READER)
    assert empty.json() == {"default": "deny", "intentions": [], "version": 0}
    denied = await client.put("/v1/intentions/web/db", json={"action": "allow"}, headers=READER)
    assert denied.status_code == 403 and denied.json()["scope"] == "admin"
    assert (await client.put("/v1/intentions/web/db", json={"action": "allow"})).status_code \
        == 401
    added = await client.put("/v1/intentions/web/db", json={"action": "allow"}, headers=OPS)
    assert added.status_code == 201, added.text
    changed = await client.put("/v1/intentions/web/db",
                               json={"action": "deny", "description": "incident 42"},
                               headers=OPS)
    assert changed.status_code == 200
    listed = (await client.get("/v1/intentions", headers=READER)).json()
    assert listed["intentions"] == [{"source": "web", "destination": "db", "action": "deny",
                                     "description": "incident 42"}]
    assert (await client.delete("/v1/intentions/web/db", headers=OPS)).status_code == 204
    assert (await client.delete("/v1/intentions/web/db", headers=OPS)).status_code == 404
    whole = await client.put("/v1/intentions", headers=OPS, json={
        "default": "allow", "intentions": [
            {"source": "*", "destination": "db", "action": "deny", "description": ""}],
        "version": listed["version"]})
    assert whole.status_code == 409 and whole.json()["field"] == "version"  # moved since
    whole = await client.put("/v1/intentions", headers=OPS, json={
        "default": "allow", "intentions": [
            {"source": "*", "destination": "db", "action": "deny", "description": ""}]})
    assert whole.status_code == 200 and whole.json()["default"] == "allow"


async def test_concurrent_changes_keep_every_rule(client: httpx.AsyncClient) -> None:
    answers = await asyncio.gather(*(
        client.put(f"/v1/intentions/src-{n}/db", json={"action": "allow"}, headers=OPS)
        for n in range(12)))
    assert [a.status_code for a in answers] == [201] * 12
    listed = (await client.get("/v1/intentions", headers=OPS)).json()
    assert sorted(r["source"] for r in listed["intentions"]) == sorted(
        f"src-{n}" for n in range(12))


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/intentions/Web%20X/db", {"action": "allow"}, "source"),
    ("/v1/intentions/web/d*b", {"action": "allow"}, "destination"),
    ("/v1/intentions/web/db", {"action": "maybe"}, "action"),
    ("/v1/intentions/web/db", {"action": "allow", "description": "x" * 129}, "description"),
    ("/v1/config/intentions", {"value": {"default": "perhaps"}, "version": 0}, "default"),
    ("/v1/config/Bad", {"value": {}, "version": 0}, "name"),
])
async def test_bad_changes_name_the_field_and_store_nothing(
    client: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    response = await client.put(path, json=body, headers=OPS)
    assert response.status_code in (400, 422), response.text
    assert response.json()["field"] == field
    assert (await client.get("/v1/intentions", headers=OPS)).json()["version"] == 0
