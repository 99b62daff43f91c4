"""A running pilotfish registry per backend, and helpers to register through its native API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish

CONSUL_BACKENDS = ["memory", "etcd"]


@dataclass
class Registry:
    """A pilotfish registry process and a plain HTTP client for its native API."""

    process: PilotfishProcess
    http: httpx.Client

    @property
    def host(self) -> str:
        """The API's listen host."""
        return urlsplit(self.process.api).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """The API's listen port."""
        return urlsplit(self.process.api).port or 8500

    def register(self, service: str, instance_id: str, address: str, port: int,
                 **fields: Any) -> dict[str, Any]:
        """PUT one instance (on a lease of its own unless `lease` is given)."""
        body: dict[str, Any] = {"address": address, "port": port, **fields}
        if "lease" not in body:
            body.setdefault("ttl", 60)
        response = self.http.put(f"/v1/services/{service}/instances/{instance_id}", json=body)
        assert response.status_code in (200, 201), response.text
        result: dict[str, Any] = response.json()
        return result

    def lease(self, owner: str, ttl: int = 60) -> str:
        """A new lease held by `owner` (what a sidecar does)."""
        response = self.http.post("/v1/leases", json={"ttl": ttl, "owner": owner})
        assert response.status_code == 201, response.text
        lease_id: str = response.json()["id"]
        return lease_id

    def deregister(self, service: str, instance_id: str) -> None:
        """DELETE one instance."""
        response = self.http.delete(f"/v1/services/{service}/instances/{instance_id}")
        assert response.status_code == 204, response.text


def start_registry(url: str, *extra: str) -> Registry:
    """`pilotfish registry` on an ephemeral port over the catalog at `url`."""
    process = start_pilotfish("registry", "--registry", url, "--api", "127.0.0.1:0", *extra)
    return Registry(process, httpx.Client(base_url=process.api, timeout=10))


@pytest.fixture(scope="module", params=CONSUL_BACKENDS)
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """One registry process per backend for the module (tests use their own service names)."""
    if request.param == "etcd":
        url = request.getfixturevalue("etcd_server").url(f"pf-consul-{uuid.uuid4().hex[:8]}")
    else:
        url = "memory://"
    running = start_registry(url)
    try:
        yield running
    finally:
        running.http.close()
        running.process.stop()
    assert not running.process.crashes(), running.process.crashes()


@pytest.fixture
def name() -> str:
    """A service name no other test uses."""
    return "svc-" + uuid.uuid4().hex[:8]
