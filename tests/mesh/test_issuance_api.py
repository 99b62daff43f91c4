"""POST /v1/mesh/certificates: who may get a certificate for which service, and bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.http.acl import AccessPolicy
from pilotfish.mesh.identity import spiffe_id
from pilotfish.mesh.keys import csr_pem, new_key
from pilotfish.registry.app import RegistryApi
from tests.mesh.pki import DOMAIN, MeshPki

ACL = """default_read = false
[[token]]
name = "web-sidecar"
secret = "web-secret-1"
scopes = ["read", "write:web"]
[[token]]
name = "ops"
secret = "ops-secret-1"
scopes = ["admin"]
"""


async def _client(registry: RegistryApi) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=registry.app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8500")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, MeshPki]]:
    (tmp_path / "acl.toml").write_text(ACL)
    pki = MeshPki.make(tmp_path / "ca")
    catalog = MemoryCatalog()
    registry = RegistryApi(catalog, access=AccessPolicy(str(tmp_path / "acl.toml")),
                           authority=pki.authority, max_cert_ttl=600)
    async with await _client(registry) as client:
        yield client, pki
    await catalog.close()


def _as(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


async def test_a_token_that_writes_web_gets_a_web_certificate_and_no_other(
    api: tuple[httpx.AsyncClient, MeshPki]
) -> None:
    client, pki = api
    csr = csr_pem(new_key(), "web", DOMAIN)
    issued = await client.post("/v1/mesh/certificates", json={"service": "web", "csr": csr},
                               headers=_as("web-secret-1"))
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["spiffe_id"] == spiffe_id(DOMAIN, "web") and body["ca"] == pki.authority.pem
    certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert certificate.not_valid_after_utc.timestamp() == pytest.approx(body["expires_at"], abs=1)
    denied = await client.post("/v1/mesh/certificates", json={"service": "db", "csr": csr},
                               headers=_as("web-secret-1"))
    assert denied.status_code == 403 and denied.json()["scope"] == "write:db"
    for secret in (None, "not-a-token"):
        anonymous = await client.post("/v1/mesh/certificates",
                                      json={"service": "web", "csr": csr}, headers=_as(secret))
        assert anonymous.status_code == 401
    admin = await client.post("/v1/mesh/certificates", json={"service": "db", "csr": csr},
                              headers=_as("ops-secret-1"))
    assert admin.status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({"service": "web"}, "csr"),
    ({"service": "web", "csr": "garbage"}, "csr"),
    ({"service": "-bad-", "csr": "x"}, "service"),
    ({"service": "web", "csr": "x", "ttl": 1}, "ttl"),
    ({"service": "web", "csr": "x", "ttl": 601}, "ttl"),
    ({"service": "web", "csr": "x", "extra": 1}, "extra"),
])
async def test_bad_requests_name_the_field(api: tuple[httpx.AsyncClient, MeshPki],
                                           body: dict[str, Any], field: str) -> None:
    client, _ = api
    if body.get("csr") == "x" and field == "ttl":
        body = {**body, "csr": csr_pem(new_key(), "web", DOMAIN)}
    response = await client.post("/v1/mesh/certificates", json=body,
                                 headers=_as("web-secret-1"))
    assert response.status_code in (400, 422), response.text
    assert response.json()["field"] == field and response.json()["code"] == "invalid"


async def test_an_api_without_an_acl_issues_nothing(tmp_path: Path) -> None:
    pki = MeshPki.make(tmp_path)
    catalog = MemoryCatalog()
    async with await _client(RegistryApi(catalog, authority=pki.authority)) as client:
        response = await client.post("/v1/mesh/certificates", json={
            "service": "web", "csr": csr_pem(new_key(), "web", DOMAIN)})
        assert response.status_code == 403 and "needs an ACL" in response.json()["error"]
        roots = await client.get("/v1/mesh/ca")
        assert roots.json() == {"trust_domain": DOMAIN, "roots": [pki.authority.pem]}
    async with await _client(RegistryApi(catalog)) as client:  # no CA: no such path
        assert (await client.post("/v1/mesh/certificates", json={})).status_code == 404
