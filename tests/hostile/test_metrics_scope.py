"""/metrics follows the read scope: where reads need a token, anonymous scrapes get no instance.

With `default_read = false`, GET /v1/services is 401 without a token; the same process's
/metrics (the registry port, the LB port, --dns-metrics) must not list the instance ids and
addresses the catalog hides. Aggregates and process_* stay open for health scraping; a
read token (what Prometheus sends with `authorization` in its scrape config) gets everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.acl import CLOSED_ACL, DEPLOYER, OPS, VIEWER
from tests.fixtures.process import PilotfishProcess, StartPilotfish
from tests.fixtures.servers import HOST, free_port

INSTANCE_ID = "w-7f3a9c"


def _bearer(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _scrape(base: str, secret: str | None = None) -> httpx.Response:
    return httpx.get(f"{base}/metrics", headers=_bearer(secret), timeout=10)


def _register(api: str, backend_port: int) -> None:
    response = httpx.put(f"{api}/v1/services/web/instances/{INSTANCE_ID}", timeout=10,
                         json={"address": HOST, "port": backend_port, "ttl": 60},
                         headers=_bearer(OPS))
    assert response.status_code in (200, 201), response.text


def _wait_for_instance(base: str) -> None:
    deadline = time.monotonic() + 10
    while INSTANCE_ID not in _scrape(base, VIEWER).text:
        assert time.monotonic() < deadline, "the LB never listed the instance"
        time.sleep(0.05)


def _assert_scoped(base: str, backend_port: int) -> dict[str, int]:
    """Anonymous, write-only and unknown tokens: aggregates only; a read token: everything."""
    address = f"{HOST}:{backend_port}"
    seen: dict[str, int] = {}
    for who, secret in (("anonymous", None), ("writer", DEPLOYER), ("unknown", "not-a-token")):
        response = _scrape(base, secret)
        assert response.status_code == 200, (who, response.text)
        text = response.text
        assert INSTANCE_ID not in text and address not in text, (who, base)
        assert "pilotfish_lb_instance_" not in text, (who, base)
        assert "process_open_fds" in text and "pilotfish_lb_connections " in text, (who, base)
        seen[who] = len(text.splitlines())
    full = _scrape(base, VIEWER)
    assert full.status_code == 200
    assert INSTANCE_ID in full.text and address in full.text
    assert "pilotfish_lb_instance_connections_total{" in full.text
    seen["reader"] = len(full.text.splitlines())
    return seen


@pytest.fixture
def acl_file(tmp_path: Path) -> Iterator[Path]:
    """An ACL where reads need a token."""
    path = tmp_path / "acl.toml"
    path.write_text(CLOSED_ACL)
    yield path


def test_up_hides_instances_on_every_metrics_port_from_anonymous_scrapes(
        pilotfish: StartPilotfish, acl_file: Path) -> None:
    route_port, backend_port = free_port(), free_port()
    running: PilotfishProcess = pilotfish(
        "up", "--api", f"{HOST}:0", "--acl", str(acl_file), "--dns", f"{HOST}:0",
        "--dns-metrics", f"{HOST}:0", "--lb-api", f"{HOST}:0",
        "--route", f"{HOST}:{route_port}=web",
        expect=("registry API", "lb API", "dns metrics"))
    _register(running.api, backend_port)
    lb_port = "http://" + running.listening["lb API"]
    dns_port = "http://" + running.listening["dns metrics"]
    _wait_for_instance(running.api)
    assert httpx.get(f"{running.api}/v1/services", timeout=10).status_code == 401
    for base in (running.api, lb_port, dns_port):  # the LB port has no --lb-acl: the API's
        _assert_scoped(base, backend_port)


def test_lb_port_with_its_own_acl(pilotfish: StartPilotfish, acl_file: Path,
                                  tmp_path: Path) -> None:
    registry = pilotfish("registry", "--api", f"{HOST}:0", "--acl", str(acl_file))
    backend_port = free_port()
    _register(registry.api, backend_port)
    (tmp_path / "reader").write_text(VIEWER + "\n")
    lb = pilotfish("lb", "--registry", registry.api, "--token-file", str(tmp_path / "reader"),
                   "--lb-api", f"{HOST}:0", "--lb-acl", str(acl_file),
                   "--route", f"{HOST}:{free_port()}=web", expect=("lb API",))
    base = "http://" + lb.listening["lb API"]
    _wait_for_instance(base)
    assert httpx.get(f"{base}/v1/routes", timeout=10).status_code == 401
    seen = _assert_scoped(base, backend_port)
    assert seen["reader"] > seen["anonymous"]


def test_open_reads_show_everything(pilotfish: StartPilotfish) -> None:
    running = pilotfish("up", "--api", f"{HOST}:0", "--dns", "off", "--lb-api", f"{HOST}:0",
                        "--route", f"{HOST}:{free_port()}=web", expect=("registry API", "lb API"))
    response = httpx.put(f"{running.api}/v1/services/web/instances/{INSTANCE_ID}", timeout=10,
                         json={"address": HOST, "port": free_port(), "ttl": 60})
    assert response.status_code == 201
    deadline = time.monotonic() + 10
    while INSTANCE_ID not in _scrape("http://" + running.listening["lb API"]).text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert INSTANCE_ID in _scrape(running.api).text
