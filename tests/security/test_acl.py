"""The registry ACL, in-process: every endpoint x every kind of caller, and lease ownership."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.config import ConfigError
from pilotfish.http.acl import AccessPolicy, digest, parse_acl
from pilotfish.registry.app import RegistryApi

SECRETS = {
    "web-team": "web-secret-1",
    "web-other": "web-secret-2",
    "db-team": "db-secret-1",
    "reader": "reader-secret",
    "writer-only": "writer-secret",
    "ops": "ops-secret-1",
}
ACL = {
    "default_read": False,
    "token": [
        {"name": "web-team", "secret": SECRETS["web-team"],
         "scopes": ["read", "write:web", "write:web-*"]},
        {"name": "web-other", "secret_sha256": digest(SECRETS["web-other"]).hex(),
         "scopes": ["read", "write:web"]},
        {"name": "db-team", "secret": SECRETS["db-team"], "scopes": ["read", "write:db"]},
        {"name": "reader", "secret": SECRETS["reader"], "scopes": ["read"]},
        {"name": "writer-only", "secret": SECRETS["writer-only"], "scopes": ["write:web"]},
        {"name": "ops", "secret": SECRETS["ops"], "scopes": ["admin"]},
    ],
}
UNKNOWN = "not-a-token-anyone-has"
_counter = itertools.count()


class AclFile:
    """An ACL in a file, re-writable (for reload tests)."""

    def __init__(self, path: Any, data: dict[str, Any]) -> None:
        self.path = path
        self.write(data)

    def write(self, data: dict[str, Any]) -> None:
        lines = [f"default_read = {'true' if data.get('default_read', True) else 'false'}"]
        for token in data["token"]:
            lines.append("[[token]]")
            for key, value in token.items():
                if isinstance(value, list):
                    lines.append(f"{key} = [{', '.join(repr(v) for v in value)}]")
                else:
                    lines.append(f"{key} = {value!r}".replace("'", '"'))
        self.path.write_text("\n".join(lines) + "\n")


@dataclass
class Api:
    client: httpx.AsyncClient
    api: RegistryApi
    catalog: MemoryCatalog

    async def as_(self, name: str | None, method: str, path: str,
                  json: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {} if name is None else {
            "Authorization": f"Bearer {SECRETS.get(name, UNKNOWN)}"}
        return await self.client.request(method, path, json=json, headers=headers, **kwargs)


@pytest.fixture
async def api(tmp_path: Any) -> AsyncIterator[Api]:
    acl_file = AclFile(tmp_path / "acl.toml", ACL)
    catalog = MemoryCatalog()
    registry = RegistryApi(catalog, access=AccessPolicy(str(acl_file.path)))
    transport = httpx.ASGITransport(app=registry.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8500") as client:
        yield Api(client, registry, catalog)
    await catalog.close()


async def web_lease(api: Api, owner: str = "web-team") -> str:
    """A lease created through the API by `owner`, holding one instance of web."""
    lease = await api.as_(owner, "POST", "/v1/leases", {"ttl": 30})
    assert lease.status_code == 201, lease.text
    lease_id: str = lease.json()["id"]
    instance = await api.as_(owner, "PUT", f"/v1/services/web/instances/w-{next(_counter)}",
                             {"address": "10.0.0.1", "port": 80, "lease": lease_id})
    assert instance.status_code == 201, instance.text
    return lease_id


async def web_instance(api: Api) -> str:
    """An instance of web with a lease of its own, registered by web-team."""
    instance_id = f"own-{next(_counter)}"
    made = await api.as_("web-team", "PUT", f"/v1/services/web/instances/{instance_id}",
                         {"address": "10.0.0.2", "port": 80, "ttl": 30})
    assert made.status_code == 201, made.text
    return instance_id


@dataclass(frozen=True)
class Case:
    """One endpoint: how to call it (given fresh state) and which tokens are in and out of scope."""

    name: str
    method: str
    path: str
    body: Callable[[dict[str, str]], Any] | None
    in_scope: str
    out_of_scope: str
    missing_scope: str | None  # what a 403 names
    ok: int
    prepare: Callable[[Api], Awaitable[dict[str, str]]] | None = None
    consul: bool = False


async def _lease(api: Api) -> dict[str, str]:
    return {"lease": await web_lease(api)}


async def _instance(api: Api) -> dict[str, str]:
    return {"instance": await web_instance(api)}


async def _nothing(api: Api) -> dict[str, str]:
    await web_instance(api)  # something to read
    return {"instance": f"new-{next(_counter)}"}


def _ttl_body(_: dict[str, str]) -> Any:
    return {"address": "10.0.0.3", "port": 8080, "ttl": 30}


def _lease_body(state: dict[str, str]) -> Any:
    return {"address": "10.0.0.3", "port": 8080, "lease": state["lease"]}


WRITES = [
    Case("create lease", "POST", "/v1/leases", lambda _: {"ttl": 30}, "web-team", "reader",
         "write:<any service>", 201, _nothing),
    Case("register with ttl", "PUT", "/v1/services/web/instances/{instance}", _ttl_body,
         "web-team", "db-team", "write:web", 201, _nothing),
    Case("register on a lease", "PUT", "/v1/services/web/instances/on-{lease}", _lease_body,
         "web-team", "db-team", "write:web", 201, _lease),
    Case("update an instance", "PUT", "/v1/services/web/instances/{instance}", _ttl_body,
         "web-team", "reader", "write:web", 200, _instance),
    Case("keepalive an instance", "PUT", "/v1/services/web/instances/{instance}/keepalive",
         None, "web-team", "db-team", "write:web", 200, _instance),
    Case("deregister", "DELETE", "/v1/services/web/instances/{instance}", None, "web-team",
         "db-team", "write:web", 204, _instance),
    Case("keepalive a lease", "PUT", "/v1/leases/{lease}/keepalive", None, "web-team",
         "db-team", "admin", 200, _lease),
    Case("revoke a lease", "DELETE", "/v1/leases/{lease}", None, "web-team", "db-team", "admin",
         204, _lease),
]
READS = [
    Case("read a lease", "GET", "/v1/leases/{lease}", None, "web-team", "db-team", "admin", 200,
         _lease),
    Case("services", "GET", "/v1/services", None, "reader", "writer-only", "read", 200, _nothing),
    Case("one service", "GET", "/v1/services/web", None, "reader", "writer-only", "read", 200,
         _nothing),
    Case("catalog", "GET", "/v1/catalog", None, "reader", "writer-only", "read", 200, _nothing),
    *[Case(f"consul {path}", "GET", path, None, "reader", "writer-only", "read", 200, _nothing,
           consul=True)
      for path in ("/v1/catalog/services", "/v1/catalog/service/web", "/v1/health/service/web",
                   "/v1/catalog/nodes", "/v1/health/checks/web", "/v1/health/state/any",
                   "/v1/catalog/datacenters", "/v1/agent/self", "/v1/status/leader",
                   "/v1/status/peers")],
]
CALLERS = ["none", "unknown", "out-of-scope", "in-scope", "admin"]


@pytest.mark.parametrize("case", WRITES + READS, ids=lambda c: c.name)
@pytest.mark.parametrize("who", CALLERS)
async def test_every_endpoint_by_every_kind_of_caller(api: Api, case: Case, who: str) -> None:
    state = await case.prepare(api) if case.prepare is not None else {}
    path = case.path.format(**state)
    body = case.body(state) if case.body is not None else None
    name = {"none": None, "unknown": "unknown", "out-of-scope": case.out_of_scope,
            "in-scope": case.in_scope, "admin": "ops"}[who]
    response = await api.as_(name, case.method, path, body)
    for secret in (*SECRETS.values(), UNKNOWN):
        assert secret not in response.text
        assert secret not in str(response.headers)
    if who in ("in-scope", "admin"):
        assert response.status_code == case.ok, response.text
        return
    if case.consul:  # Consul's dialect: 403 always, "ACL not found" for an unknown token
        assert response.status_code == 403, response.text
        if who == "unknown":
            assert response.text == "ACL not found"
        elif who == "out-of-scope":
            assert response.text == (f"Permission denied: token {case.out_of_scope!r} lacks "
                                     f"scope 'read'")
        return
    if who in ("none", "unknown"):
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"
        return
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"
    assert response.json()["token"] == case.out_of_scope
    assert response.json()["scope"] == case.missing_scope
    assert case.missing_scope is not None and case.missing_scope in response.json()["error"]
    assert "insufficient_scope" in response.headers["WWW-Authenticate"]


async def test_refused_writes_change_nothing(api: Api) -> None:
    lease_id = await web_lease(api)
    before = (await api.as_("ops", "GET", "/v1/catalog")).json()["instances"]
    for name in (None, "unknown", "db-team", "reader"):
        assert (await api.as_(name, "PUT", "/v1/services/web/instances/x",
                              _ttl_body({}))).status_code in (401, 403)
        assert (await api.as_(name, "DELETE", f"/v1/leases/{lease_id}")).status_code in (401, 403)
        assert (await api.as_(name, "PUT", "/v1/services/db/instances/x",
                              _lease_body({"lease": lease_id}))).status_code in (401, 403)
    assert (await api.as_("ops", "GET", "/v1/catalog")).json()["instances"] == before


async def test_team_a_cannot_keep_alive_revoke_or_register_onto_team_b_lease(api: Api) -> None:
    a_lease = await web_lease(api, "web-team")
    own = await web_instance(api)  # web-team's instance on a lease of its own
    # web-other may write web too: what it lacks is web-team's lease
    for method, path, body in (
        ("PUT", f"/v1/leases/{a_lease}/keepalive", None),
        ("DELETE", f"/v1/leases/{a_lease}", None),
        ("GET", f"/v1/leases/{a_lease}", None),
        ("PUT", "/v1/services/web/instances/hijack", _lease_body({"lease": a_lease})),
        ("PUT", f"/v1/services/web/instances/{own}/keepalive", None),
    ):
        refused = await api.as_("web-other", method, path, body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["token"] == "web-other"
        assert f"lease {a_lease!r}" in refused.json()["error"] or "belongs to another token" in (
            refused.json()["error"])
    catalog = (await api.as_("ops", "GET", "/v1/catalog")).json()["instances"]
    assert "hijack" not in {i["id"] for i in catalog}
    assert a_lease in {i["lease"] for i in catalog}  # still there, untouched
    # the holder and admin may; web-other's own lease is its own
    assert (await api.as_("web-team", "PUT", f"/v1/leases/{a_lease}/keepalive")).status_code \
        == 200
    assert (await api.as_("ops", "GET", f"/v1/leases/{a_lease}")).status_code == 200
    b_lease = await web_lease(api, "web-other")
    assert (await api.as_("web-team", "PUT", f"/v1/leases/{b_lease}/keepalive")).status_code \
        == 403
    assert (await api.as_("web-other", "DELETE", f"/v1/leases/{b_lease}")).status_code == 204


async def test_a_holder_without_read_scope_may_still_read_its_own_lease(api: Api) -> None:
    made = await api.as_("writer-only", "POST", "/v1/leases", {"ttl": 30})
    assert made.status_code == 201
    mine = await api.as_("writer-only", "GET", f"/v1/leases/{made.json()['id']}")
    assert mine.status_code == 200 and mine.json()["id"] == made.json()["id"]
    assert (await api.as_("writer-only", "GET", "/v1/services")).status_code == 403


async def test_moving_an_instance_needs_write_on_the_service_it_leaves(api: Api) -> None:
    made = await api.as_("db-team", "PUT", "/v1/services/db/instances/shared-id",
                         {"address": "10.0.0.9", "port": 5432, "ttl": 30})
    assert made.status_code == 201
    moved = await api.as_("web-team", "PUT", "/v1/services/web/instances/shared-id",
                          _ttl_body({}))
    assert moved.status_code == 403
    assert moved.json()["scope"] == "write:db"
    db = (await api.as_("reader", "GET", "/v1/services/db")).json()["instances"]
    assert [i["id"] for i in db] == ["shared-id"]


async def test_a_lease_this_process_never_saw_is_claimed_only_by_a_token_covering_it(
        api: Api) -> None:
    lease = await api.catalog.create_lease(30, "from-before-a-restart")
    from pilotfish.catalog.model import Instance
    await api.catalog.register(Instance(service="web", id="old", address="10.0.0.5", port=80,
                                        lease=lease.id))
    assert (await api.as_("db-team", "PUT", f"/v1/leases/{lease.id}/keepalive")).status_code \
        == 403
    assert (await api.as_("web-team", "PUT", f"/v1/leases/{lease.id}/keepalive")).status_code \
        == 200
    # now held by web-team: web-other, though it may write web, may not
    assert (await api.as_("web-other", "PUT", f"/v1/leases/{lease.id}/keepalive")).status_code \
        == 403


async def test_reads_without_a_token_follow_default_read(api: Api, tmp_path: Any) -> None:
    assert (await api.as_(None, "GET", "/v1/services")).status_code == 401
    AclFile(tmp_path / "acl.toml", {**ACL, "default_read": True})
    assert api.api.access.reload()
    assert (await api.as_(None, "GET", "/v1/services")).status_code == 200
    assert (await api.as_(None, "GET", "/v1/catalog/services")).status_code == 200
    assert (await api.as_("unknown", "GET", "/v1/services")).status_code == 401
    assert (await api.as_(None, "POST", "/v1/leases", {"ttl": 30})).status_code == 401
    lease_id = await web_lease(api)
    assert (await api.as_(None, "GET", f"/v1/leases/{lease_id}")).status_code == 401


async def test_metrics_health_and_the_schema_stay_open(api: Api) -> None:
    for path in ("/metrics", "/v1/health", "/v1/openapi.json"):
        assert (await api.as_(None, "GET", path)).status_code == 200, path
        assert (await api.as_("unknown", "GET", path)).status_code == 200, path


async def test_consul_style_tokens_are_read_too(api: Api) -> None:
    for kwargs in ({"headers": {"X-Consul-Token": SECRETS["reader"]}},
                   {"params": {"token": SECRETS["reader"]}}):
        response = await api.client.get("/v1/catalog/services", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, kwargs
        assert (await api.client.get("/v1/services", **kwargs)).status_code == 200  # type: ignore[arg-type]


async def test_a_bad_reload_keeps_the_old_acl(api: Api, tmp_path: Any) -> None:
    (tmp_path / "acl.toml").write_text("[[token]]\nname = 'x'\nscopes = ['root']\n")
    assert not api.api.access.reload()
    assert (await api.as_("reader", "GET", "/v1/services")).status_code == 200


@pytest.mark.parametrize(("data", "message"), [
    ({"token": [{"name": "a", "secret": "12345678", "scopes": ["wirte:web"]}]},
     "unknown scope 'wirte:web'"),
    ({"token": [{"name": "a", "scopes": ["read"]}]}, "exactly one of secret or secret_sha256"),
    ({"token": [{"name": "a", "secret": "short", "scopes": ["read"]}]}, "at least 8"),
    ({"token": [{"name": "a", "secret_sha256": "abc", "scopes": ["read"]}]}, "64 hex digits"),
    ({"token": [{"name": "a", "secret": "12345678", "scopes": ["read"]},
                {"name": "a", "secret": "87654321", "scopes": ["read"]}]}, "used twice"),
    ({"token": [{"name": "a", "secret": "12345678", "scopes": ["read"]},
                {"name": "b", "secret": "12345678", "scopes": ["read"]}]}, "same secret"),
    ({"default_read": "yes", "token": []}, "default_read must be true or false"),
    ({"tokens": []}, "unknown key(s) tokens"),
])
def test_acl_mistakes_are_named(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_acl(data)
    assert message in str(caught.value)
    assert "12345678" not in str(caught.value)  # secrets never echoed


async def test_check_reports_are_the_instance_writers_only(api: Api) -> None:
    lease = await api.as_("web-team", "POST", "/v1/leases", {"ttl": 30})
    lease_id = lease.json()["id"]
    made = await api.as_("web-team", "PUT", "/v1/services/web/instances/beat-1", {
        "address": "10.0.0.4", "port": 80, "lease": lease_id,
        "checks": [{"id": "app", "kind": "ttl", "ttl": 30}]})
    assert made.status_code == 201, made.text
    rest = "/v1/services/web/instances/beat-1/checks/app/pass"
    consul = "/v1/agent/check/pass/beat-1:app"
    assert (await api.as_(None, "PUT", rest)).status_code == 401
    assert (await api.as_("reader", "PUT", rest)).status_code == 403
    assert (await api.as_("db-team", "PUT", rest)).status_code == 403  # no write:web
    assert (await api.as_("web-other", "PUT", rest)).status_code == 403  # another's lease
    refused = await api.as_("web-other", "PUT", consul)
    assert refused.status_code == 403 and refused.text.startswith("Permission denied")
    assert (await api.as_(None, "PUT", consul)).status_code == 403  # Consul never says 401
    stored = (await api.catalog.snapshot()).get("beat-1")
    assert stored is not None and stored.checks[0].status == "critical"  # nothing changed
    assert (await api.as_("web-team", "PUT", rest)).status_code == 200
    assert (await api.as_("web-team", "PUT", consul.replace("pass", "warn"))).status_code == 200
    assert (await api.as_("ops", "PUT", consul)).status_code == 200
