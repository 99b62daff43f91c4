"""What a hostile client sends the registry API beyond ?filter= (issue 21, items 5 and 12).

- A failure no handler expected (here a real RecursionError in a backend) is a JSON 500 and ONE
  short log line, not a traceback per request (205 KB for one 4 KB request: a disk filler).
- A method a path does not take is a 405 with `Allow`, before access control: not a 401
  "writes need a token" that suggests a token would make PUT /v1/catalog/services work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.interface import Snapshot
from pilotfish.config import HostPort
from pilotfish.http.server import HttpServer
from pilotfish.registry.app import RegistryApi
from tests.fixtures.process import PilotfishProcess, start_pilotfish

LOG_LIMIT = 2048  # bytes of log one failed request may cost


class RecursingCatalog(MemoryCatalog):
    """A backend with a bug: its snapshot recurses without end (a real RecursionError)."""

    async def snapshot(self) -> Snapshot:
        return self._deeper(0)

    def _deeper(self, depth: int) -> Snapshot:
        return self._deeper(depth + 1)


class LogBytes(logging.Handler):
    """Counts what every log record would write, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def attach(self) -> None:
        """Start counting what the root and uvicorn loggers write."""
        for name in LOGGERS:
            logging.getLogger(name).addHandler(self)


LOGGERS = ("", "uvicorn", "uvicorn.error")  # root (pilotfish's propagate) and uvicorn's own


@pytest.fixture
def log_bytes() -> Iterator[LogBytes]:
    """Every record of pilotfish's and uvicorn's loggers, once `attach()`ed.

    uvicorn configures its loggers when a server is made: attach after that.
    """
    handler = LogBytes()
    yield handler
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)


@pytest.mark.parametrize("path", ["/v1/services", "/v1/catalog", "/v1/catalog/services",
                                  "/v1/health/service/web"])
async def test_an_unexpected_recursion_error_is_a_500_and_one_short_log_line(
        log_bytes: LogBytes, path: str) -> None:
    server = HttpServer(RegistryApi(RecursingCatalog()).app, HostPort("127.0.0.1", 0))
    log_bytes.attach()
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{server.address}", timeout=10) as client:
            answers = [await client.get(path, params={"pad": "x" * 4000}) for _ in range(3)]
            assert (await client.get("/v1/health")).status_code == 200  # still serving
    finally:
        await server.stop()
    logged = "\n".join(log_bytes.lines)
    print(f"\n{path}: 3 failures logged {len(logged)} bytes: {logged[-300:]}")
    assert len(logged) < 3 * LOG_LIMIT and "Traceback" not in logged
    for response in answers:
        assert response.status_code == 500, response.text
        assert response.json()["code"] == "internal"
    failures = [line for line in log_bytes.lines if "RecursionError" in line]
    assert len(failures) == 3, log_bytes.lines
    assert all("\n" not in line and len(line) < LOG_LIMIT for line in failures)
    assert "_deeper" in failures[0]  # names where it failed


# 405 before access control

CONSUL_PATHS = {  # path -> what it takes
    "/v1/catalog/services": "GET", "/v1/catalog/service/web": "GET",
    "/v1/health/service/web": "GET", "/v1/agent/self": "GET", "/v1/status/leader": "GET",
    "/v1/status/peers": "GET", "/v1/catalog/nodes": "GET", "/v1/catalog/node/n1": "GET",
    "/v1/health/checks/web": "GET", "/v1/health/state/any": "GET",
    "/v1/catalog/datacenters": "GET",
}
PILOTFISH_PATHS = {
    "/v1/services": "GET", "/v1/services/web": "GET", "/v1/catalog": "GET",
    "/v1/leases": "POST", "/v1/leases/abc": "DELETE, GET", "/v1/leases/abc/keepalive": "PUT",
    "/v1/services/web/instances/w1": "DELETE, PUT",
    "/v1/services/web/instances/w1/keepalive": "PUT", "/v1/health": "GET", "/metrics": "GET",
}
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE")


@pytest.fixture(scope="module", params=["open", "acl", "token-file"])
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[PilotfishProcess]:
    """A registry without access control, with an ACL (reads need a token), or a write token."""
    folder = tmp_path_factory.mktemp("acl")
    flags: list[str] = []
    if request.param == "acl":
        (folder / "acl.toml").write_text(
            'default_read = false\n[[token]]\nname = "reader"\nsecret = "reader-secret-1"\n'
            'scopes = ["read"]\n')
        flags = ["--acl", str(folder / "acl.toml")]
    elif request.param == "token-file":
        (folder / "token").write_text("writer-secret-1\n")
        flags = ["--token-file", str(folder / "token")]
    running = start_pilotfish("registry", "--api", "127.0.0.1:0", *flags)
    try:
        yield running
    finally:
        running.stop()
    assert not running.crashes(), running.crashes()


@pytest.mark.parametrize("token", [None, "reader-secret-1", "no-such-token"])
def test_a_method_a_path_does_not_take_is_405_with_allow_before_access_control(
        registry: PilotfishProcess, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=registry.api, timeout=10, headers=headers) as client:
        for paths, consul in ((CONSUL_PATHS, True), (PILOTFISH_PATHS, False)):
            for path, allowed in paths.items():
                for method in METHODS:
                    if method in allowed.split(", "):
                        continue
                    response = client.request(method, path)
                    where = f"{method} {path}: {response.status_code} {response.text[:200]}"
                    assert response.status_code == 405, where
                    assert response.headers["Allow"] == allowed, where
                    if consul:
                        assert response.text == f"method {method} not allowed", where
                    else:
                        assert response.json()["code"] == "method_not_allowed", where


def test_access_control_still_decides_the_methods_a_path_takes(tmp_path: Path) -> None:
    (tmp_path / "acl.toml").write_text('default_read = false\n[[token]]\nname = "r"\n'
                                       'secret = "reader-secret-1"\nscopes = ["read"]\n')
    with start_pilotfish("registry", "--api", "127.0.0.1:0", "--acl",
                         str(tmp_path / "acl.toml")) as running, \
            httpx.Client(base_url=running.api, timeout=10) as client:
        assert client.get("/v1/catalog/services").status_code == 403  # Consul's refusal
        assert client.get("/v1/services").status_code == 401
        assert client.put("/v1/services/web/instances/w1", json={}).status_code == 401
        assert client.post("/v1/leases", json={"ttl": 10}).status_code == 401
        assert client.get("/v1/nowhere").status_code == 401  # no route: nothing said about it
        reader = {"Authorization": "Bearer reader-secret-1"}
        assert client.get("/v1/catalog/services", headers=reader).status_code == 200
        assert client.post("/v1/leases", json={"ttl": 10}, headers=reader).status_code == 403


@pytest.mark.parametrize("query, complaint", [
    ({"index": "9" * 5000}, "Invalid index"),  # int() of it raised ValueError: a 500
    ({"index": "-1"}, "Invalid index"),
    ({"wait": "9" * 50}, "Invalid wait time"),
    ({"node-meta": "novalue"}, "Invalid node-meta"),
])
def test_bad_consul_parameters_are_400s(query: dict[str, str], complaint: str) -> None:
    with start_pilotfish("registry", "--api", "127.0.0.1:0") as running, \
            httpx.Client(base_url=running.api, timeout=10) as client:
        for path in ("/v1/catalog/services", "/v1/health/service/web"):
            response = client.get(path, params=query)
            assert response.status_code == 400 and complaint in response.text, response.text
            assert len(response.text) < 300
        assert not running.crashes()
