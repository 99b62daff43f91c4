"""A critical check takes an instance out of DNS and the LB (`pilotfish up`, dig, a socket
through an LB route), warning keeps it in (Consul's only_passing=false), and the LB's own TCP
check cannot bring back an instance whose registry check is critical although its port accepts
(as docker-proxy does for a dead app)."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.fixtures.servers import free_port

ADDRESSES = ("127.0.0.2", "127.0.0.3")
PROMPT = 3.0  # a status change reaches DNS and the LB through the view well within this


class Named(socketserver.BaseRequestHandler):
    """Says which backend it is, then closes."""

    def handle(self) -> None:
        self.request.sendall(self.server.name)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, int]]:
    servers = []
    for address in ADDRESSES:
        server = socketserver.ThreadingTCPServer((address, 0), Named)
        server.daemon_threads = True
        server.name = address.encode()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield {address: s.server_address[1] for address, s in zip(ADDRESSES, servers, strict=True)}
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def up() -> Iterator[tuple[PilotfishProcess, int]]:
    route = free_port()
    process = start_pilotfish(
        "up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--domain", "pilotfish.test",
        "--route", f"127.0.0.1:{route}=web", "--lb-check-interval", "0.2",
        expect=("registry API", "dns", "lb route to web"), timeout=60)
    with process:
        yield process, route
    assert not process.crashes(), process.crashes()


def put(api: str, address: str, port: int, status: str) -> None:
    body: dict[str, Any] = {"address": address, "port": port, "ttl": 30, "checks": [
        {"id": "http", "kind": "http", "status": status, "target": f"http://{address}:{port}/"}]}
    response = httpx.put(f"{api}/v1/services/web/instances/web-{address}", json=body, timeout=5)
    assert response.status_code in (200, 201), response.text


def dig(process: PilotfishProcess) -> list[str]:
    host, _, port = process.listening["dns"].rpartition(":")
    out = subprocess.run(["dig", "-p", port, f"@{host}", "+tries=1", "+time=2", "+short",
                          "web.service.pilotfish.test", "A"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    return sorted(out.split())


def through_lb(route: int, count: int) -> set[str]:
    seen = set()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", route), timeout=2) as sock:
            seen.add(sock.recv(64).decode())
    return seen


def eventually(what: Any, expected: Any) -> None:
    deadline = time.monotonic() + PROMPT
    while (got := what()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, not {expected!r}"
        time.sleep(0.05)


def test_critical_leaves_dns_and_the_lb_warning_stays(
    up: tuple[PilotfishProcess, int], backends: dict[str, int]
) -> None:
    process, route = up
    a, b = ADDRESSES
    put(process.api, a, backends[a], "passing")
    put(process.api, b, backends[b], "passing")
    eventually(lambda: dig(process), [a, b])
    eventually(lambda: through_lb(route, 12), {a, b})

    put(process.api, b, backends[b], "critical")  # b still accepts connections
    eventually(lambda: dig(process), [a])
    eventually(lambda: through_lb(route, 1), {a})
    time.sleep(0.6)  # three of the LB's own TCP checks, which b passes
    assert through_lb(route, 20) == {a}
    assert dig(process) == [a]

    put(process.api, b, backends[b], "warning")
    eventually(lambda: dig(process), [a, b])
    eventually(lambda: through_lb(route, 12), {a, b})
