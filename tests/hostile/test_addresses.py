"""Unusable instance addresses (issue 21, item 11) through every way in.

Before: 0.0.0.0, ::, 255.255.255.255 and 224.0.0.1 were registered, and 0.0.0.0 sent the
LB's clients to whatever listened on the LB's own host. Now the model refuses unspecified,
broadcast and multicast addresses (and their IPv4-mapped forms): the REST API with a 422
naming `address`, `pilotfish register` and the sidecar's --advertise-ip with a message.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.process import start_pilotfish

UNUSABLE = ["0.0.0.0", "::", "0:0::0", "255.255.255.255", "224.0.0.1", "239.1.2.3",  # noqa: S104
            "ff02::1", "FF05::1:3", "::ffff:0.0.0.0", "::ffff:224.0.0.1",
            "::ffff:255.255.255.255", "::ffff:0:0"]
USABLE = ["10.0.0.1", "127.0.0.1", "223.255.255.255", "255.255.255.254", "::1",
          "2001:db8::1", "::ffff:10.0.0.1"]


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    """A real registry on the memory backend."""
    with start_pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0") as run:
        with httpx.Client(base_url=run.api, timeout=10) as client:
            yield client
        assert not run.crashes(), run.crashes()


@pytest.mark.parametrize("address", UNUSABLE)
def test_the_api_refuses_an_unusable_address_naming_it(api: httpx.Client, address: str) -> None:
    lease = api.post("/v1/leases", json={"ttl": 30}).json()["id"]
    name = f"bad-{uuid.uuid4().hex[:8]}"
    for body in ({"ttl": 30}, {"lease": lease}):
        response = api.put(f"/v1/services/{name}/instances/{name}",
                           json={"address": address, "port": 80, **body})
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["field"] == "address" and error["code"] == "invalid", error
        assert address in error["error"] and any(
            word in error["error"] for word in ("unspecified", "broadcast", "multicast")), error
    assert api.get(f"/v1/services/{name}").json()["instances"] == []


@pytest.mark.parametrize("address", USABLE)
def test_the_api_keeps_usable_neighbours(api: httpx.Client, address: str) -> None:
    name = f"good-{uuid.uuid4().hex[:8]}"
    response = api.put(f"/v1/services/{name}/instances/{name}",
                       json={"address": address, "port": 80, "ttl": 30})
    assert response.status_code == 201, response.text


def test_the_openapi_schema_says_which_addresses_are_refused(api: httpx.Client) -> None:
    schema = api.get("/v1/openapi.json").json()
    body = schema["paths"]["/v1/services/{service}/instances/{instance_id}"]["put"]
    address = body["requestBody"]["content"]["application/json"]["schema"]
    address = address["properties"]["address"]
    assert "multicast" in address["description"]
    assert address["not"]["anyOf"], address


def _command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pilotfish", *args],
                          capture_output=True, text=True, timeout=30)


def test_pilotfish_register_refuses_an_unusable_address() -> None:
    result = _command("register", "--registry", "memory://", "web/w1=0.0.0.0:80")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "address" in result.stderr and "unspecified" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("advertise", ["224.0.0.1", "255.255.255.255", "::ffff:0.0.0.0"])
def test_the_sidecar_refuses_an_unusable_advertise_ip(advertise: str) -> None:
    result = _command("sidecar", "--registry", "memory://", "--docker",
                      "unix:///nonexistent.sock", "--advertise-ip", advertise)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--advertise-ip" in result.stderr and "Traceback" not in result.stderr
