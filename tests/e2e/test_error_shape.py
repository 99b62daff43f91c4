"""One error shape across every HTTP surface (issue 27).

Every error a client can get from pilotfish over HTTP — the registry API, the LB's routes API,
a listener's own refusals, /metrics + /health's 404, the last-resort 500 — is JSON
{"error", "code", "field"?} (a 401/403 adds "token" and "scope"), with a code from the one set
in pilotfish.http.errors, answered with a status that code goes with. The Consul-compatible API
answers as Consul does, in plain text, by design. Each surface is asked over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pilotfish.catalog.interface import BackendUnavailable
from pilotfish.config import HostPort
from pilotfish.http.accept import REFUSAL
from pilotfish.http.acl import AccessPolicy
from pilotfish.http.errors import CODES
from pilotfish.http.failures import LastResort
from pilotfish.http.limits import HttpLimits
from pilotfish.http.server import HttpServer
from pilotfish.http.status import StatusApp
from pilotfish.http.tls import TlsSettings
from pilotfish.metrics import Metrics
from pilotfish.registry.app import RegistryApi
from tests.fixtures.backends import FailingCatalog
from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.fixtures.servers import HOST, free_port
from tests.security.certs import make_pki

SHAPE = {"error", "code", "field", "token", "scope"}
ACL = """default_read = true
[[token]]
name = "ops"
secret = "ops-secret"
scopes = ["admin"]
[[token]]
name = "reader"
secret = "reader-secret"
scopes = ["read"]
"""
ADMIN = {"Authorization": "Bearer ops-secret"}
READER = {"Authorization": "Bearer reader-secret"}
LIMITS = HttpLimits(max_header=4096, request_timeout=0.5, max_connections=4)


def check(status: int, content_type: str, body: bytes, code: str,
          field: str | None = None) -> dict[str, Any]:
    """The answer is in the one shape, with `code` (from the one set) and `field`."""
    assert content_type.startswith("application/json"), (status, content_type, body[:200])
    data = json.loads(body)
    assert isinstance(data, dict) and {"error", "code"} <= set(data) <= SHAPE, data
    assert isinstance(data["error"], str) and data["error"], data
    assert data["code"] in CODES and status in CODES[data["code"]], (status, data)
    assert (data["code"], data.get("field")) == (code, field), (status, data)
    return data


def check_response(response: httpx.Response, status: int, code: str,
                   field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    return check(status, response.headers.get("content-type", ""), response.content, code,
                 field)


def check_raw(said: bytes, status: int, code: str, field: str | None = None) -> None:
    """A whole raw HTTP/1.1 response, as a listener writes it outside any request."""
    head, _, body = said.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), said[:200]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert int(headers["content-length"]) == len(body), said[:300]
    check(status, headers["content-type"], body, code, field)


@asynccontextmanager
async def registry(tmp_path: Path, tls: TlsSettings | None = None
                   ) -> AsyncIterator[tuple[HttpServer, FailingCatalog]]:
    """The registry API with an ACL, in this process, on a real socket with small limits."""
    acl = tmp_path / "acl.toml"
    acl.write_text(ACL)
    catalog = FailingCatalog()
    api = RegistryApi(catalog, max_body=1024, access=AccessPolicy(str(acl)))
    server = HttpServer(api.app, HostPort(HOST, 0), before_stop=api.stop_waiting,
                        limits=LIMITS, tls=tls)
    await server.start()
    try:
        yield server, catalog
    finally:
        await server.stop()
        await catalog.close()


async def test_the_registry_api_answers_every_error_in_the_one_shape(tmp_path: Path) -> None:
    async with registry(tmp_path) as (server, catalog), httpx.AsyncClient(
            base_url=f"http://{server.address}", timeout=5) as client:
        check_response(await client.get("/v1/nope"), 404, "not_found")
        check_response(await client.patch("/v1/services"), 405, "method_not_allowed")
        check_response(await client.get("/v1/services/web", params={"wait": "ever"}), 400,
                       "invalid", "wait")
        check_response(await client.get("/v1/catalog", params={"index": "x"}), 422,
                       "invalid", "index")
        check_response(await client.post("/v1/leases", json={"ttl": 1}, headers=ADMIN), 422,
                       "invalid", "ttl")
        check_response(await client.put("/v1/services/web/instances/w1", headers=ADMIN,
                                        json={"address": "10.0.0.1", "port": 80}),
                       400, "invalid", "ttl")
        check_response(await client.put("/v1/services/web/instances/w1", headers=ADMIN,
                                        json={"address": "0.0.0.0", "port": 80, "ttl": 30}),
                       422, "invalid", "address")
        too_large = await client.post("/v1/leases", content=b" " * 2048, headers=ADMIN)
        check_response(too_large, 413, "too_large", "body")
        check_response(await client.post("/v1/leases", json={"ttl": 30}), 401, "unauthorized")
        check_response(await client.get("/v1/services", headers={"Authorization": "Bearer x"}),
                       401, "unauthorized")
        refused = check_response(await client.post("/v1/leases", json={"ttl": 30},
                                                   headers=READER), 403, "forbidden")
        assert refused["token"] == "reader" and refused["scope"], refused
        check_response(await client.get("/v1/leases/nosuch", headers=ADMIN), 404,
                       "unknown_lease")
        check_response(await client.put("/v1/services/web/instances/w1", headers=ADMIN,
                                        json={"address": "10.0.0.1", "port": 80,
                                              "lease": "nosuch"}), 404, "unknown_lease",
                       "lease")
        check_response(await client.delete("/v1/services/web/instances/w1", headers=ADMIN),
                       404, "not_found")
        index = (await client.get("/v1/catalog")).headers["X-Pilotfish-Index"]
        waiting = asyncio.create_task(client.get("/v1/catalog", params={
            "index": index, "wait": "3s"}))  # two may wait on a cap of 4: the third is refused
        second = asyncio.create_task(client.get("/v1/catalog", params={
            "index": index, "wait": "3s"}))
        await asyncio.sleep(0.3)
        check_response(await client.get("/v1/catalog", params={"index": index, "wait": "3s"}),
                       503, "unavailable")
        catalog.failure = BackendUnavailable("cut off (test)")
        check_response(await client.get("/v1/services"), 503, "unavailable")
        catalog.failure = RuntimeError("a bug in a backend")
        check_response(await client.get("/v1/services"), 500, "internal")
        catalog.failure = None
        waiting.cancel()
        second.cancel()


async def raw(address: HostPort, data: bytes) -> bytes:
    """Send `data` on a new connection; all the server says until it closes."""
    reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


async def test_a_listener_refuses_in_the_one_shape(tmp_path: Path) -> None:
    async with registry(tmp_path) as (server, _):
        address = server.address
        big = b"GET /v1/services HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 8192 + b"\r\n\r\n"
        check_raw(await raw(address, big), 431, "too_large")
        check_raw(await raw(address, b"GET /v1/services HTTP/1.1\r\nhost: x\r\n"), 408,
                  "timeout")
        busy = []  # requests whose bodies are still on their way hold every connection
        for _ in range(LIMITS.max_connections):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n"
                         b"authorization: Bearer ops-secret\r\n\r\n{")
            busy.append(writer)
        await asyncio.sleep(0.1)
        check_raw(await raw(address, b""), 503, "unavailable")
        for writer in busy:
            writer.close()
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = TlsSettings(str(pki.server_cert), str(pki.server_key))
    async with registry(tmp_path, tls) as (server, _):
        said = await raw(server.address, b"GET /v1/services HTTP/1.1\r\nhost: x\r\n\r\n")
        check_raw(said, 400, "https_required")
    check_raw(REFUSAL, 503, "unavailable")  # out of file descriptors (tests/hostile provokes it)


async def test_status_pages_and_the_last_resort_answer_in_the_one_shape() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug in a handler")

    status = HttpServer(StatusApp(Metrics(), lambda: (True, {})), HostPort(HOST, 0))
    last_resort = HttpServer(LastResort(broken), HostPort(HOST, 0))
    await status.start()
    await last_resort.start()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            check_response(await client.get(f"http://{status.address}/nope"), 404, "not_found")
            check_response(await client.get(f"http://{last_resort.address}/"), 500, "internal")
    finally:
        await status.stop()
        await last_resort.stop()


@pytest.fixture(scope="module")
def lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PilotfishProcess]:
    """`pilotfish lb` with its routes API behind an ACL."""
    acl = tmp_path_factory.mktemp("lb") / "acl.toml"
    acl.write_text(ACL)
    process = start_pilotfish("lb", "--registry", "memory://", "--lb-api", f"{HOST}:0",
                              "--lb-acl", str(acl), expect=("lb API",))
    yield process
    process.stop()
    assert not process.crashes(), process.crashes()


async def test_the_lb_routes_api_answers_every_error_in_the_one_shape(
        lb: PilotfishProcess) -> None:
    taken = free_port()
    async with httpx.AsyncClient(base_url=f"http://{lb.listening['lb API']}", timeout=5,
                                 headers=ADMIN) as client:
        check_response(await client.get("/v1/nope"), 404, "not_found")
        check_response(await client.post("/v1/routes"), 405, "method_not_allowed")
        check_response(await client.get(f"/v1/routes/{HOST}:{taken}"), 404, "not_found",
                       "listen")
        check_response(await client.put(f"/v1/routes/{HOST}:{taken}", json={"service": "-"}),
                       400, "invalid", "service")
        check_response(await client.put(f"/v1/routes/{HOST}:{taken}",
                                        content=b" " * (65 * 1024)), 413, "too_large", "body")
        check_response(await client.put(f"/v1/routes/{HOST}:{taken}", json={"service": "web"},
                                        headers={"Authorization": ""}), 401, "unauthorized")
        refused = check_response(await client.put(f"/v1/routes/{HOST}:{taken}", headers=READER,
                                                  json={"service": "web"}), 403, "forbidden")
        assert refused["token"] == "reader" and refused["scope"] == "admin", refused
        with socket.socket() as holder:
            holder.bind((HOST, 0))
            holder.listen()
            port = holder.getsockname()[1]
            check_response(await client.put(f"/v1/routes/{HOST}:{port}",
                                            json={"service": "web"}), 409, "conflict", "listen")


async def test_the_consul_compatible_api_answers_as_consul_does(tmp_path: Path) -> None:
    """By design: Consul's clients parse Consul's plain-text errors, not pilotfish's shape."""
    async with registry(tmp_path) as (server, _), httpx.AsyncClient(
            base_url=f"http://{server.address}", timeout=5) as client:
        for answer in (await client.get("/v1/catalog/services", params={"filter": "=="}),
                       await client.get("/v1/catalog/services", params={"token": "unknown"})):
            assert answer.status_code in (400, 403), answer.text
            assert answer.headers["content-type"].startswith("text/plain"), answer.headers
