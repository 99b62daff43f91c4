"""The check scheduler and its probes against real servers on loopback: Consul's verdicts on
HTTP codes and exit codes, a timeout, and a registered instance changed only when a status
changes, not at every probe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pilotfish.catalog.model import Check, Instance
from pilotfish.sidecar.checker import Checker
from pilotfish.sidecar.probes import exit_status, http_status, probe


@pytest.fixture
async def web() -> AsyncIterator[tuple[int, dict[str, bytes]]]:
    """A small HTTP server on loopback answering each path with the status line set for it
    (404 for the others); also a path that never answers (/hang)."""
    answers: dict[str, bytes] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1].decode()
        if path == "/hang":
            await asyncio.sleep(5)
        line = answers.get(path, b"404 Not Found")
        writer.write(b"HTTP/1.0 " + line + b"\r\nContent-Type: text/plain\r\n\r\nbody of "
                     + path.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, answers
    finally:
        server.close()


def http_check(port: int, path: str, interval: float = 0.05, timeout: float = 1.0) -> Check:
    """An http check as the labels make it."""
    return Check(id="http", name=f"HTTP GET {path}", kind="http",
                 target=f"http://127.0.0.1:{port}{path}", interval=interval, timeout=timeout)


@pytest.mark.parametrize(("code", "status"), [
    (200, "passing"), (204, "passing"), (429, "warning"), (301, "critical"), (404, "critical"),
    (500, "critical"), (503, "critical"),
])
def test_http_codes_as_consul_judges_them(code: int, status: str) -> None:
    assert http_status(code) == status


@pytest.mark.parametrize(("code", "status"), [(0, "passing"), (1, "warning"), (2, "critical"),
                                              (127, "critical")])
def test_exit_codes_as_consul_judges_them(code: int, status: str) -> None:
    assert exit_status(code) == status


async def test_probes_say_what_they_saw(web: tuple[int, dict[str, bytes]]) -> None:
    port, answers = web
    answers["/ok"] = b"200 OK"
    passed = await probe(http_check(port, "/ok"), "", None)
    assert passed.status == "passing"
    assert passed.output == f"HTTP GET http://127.0.0.1:{port}/ok: 200 OK Output: body of /ok"
    assert (await probe(http_check(port, "/missing"), "", None)).status == "critical"
    slow = await probe(http_check(port, "/hang", timeout=0.2), "", None)
    assert (slow.status, slow.output) == ("critical", "HTTP GET /hang: timed out after 0.2s")
    tcp = Check(id="tcp", name="TCP connect", kind="tcp", target=f"127.0.0.1:{port}")
    assert (await probe(tcp, "", None)).status == "passing"


async def test_a_status_change_is_one_update_not_one_per_probe(
        web: tuple[int, dict[str, bytes]]) -> None:
    """Probes every 50 ms for 0.6 s: the owner hears of the first verdict and of the one
    change, nothing in between."""
    port, answers = web
    updates: list[str] = []
    instance = Instance(service="web", id="w1", address="127.0.0.1", port=port, lease="l",
                        checks=(http_check(port, "/ok"),))
    checker = Checker(lambda: updates.append(checker.overlay(instance).checks[0].status))
    checker.follow([("c1", instance)])
    await checker.start()
    try:
        await asyncio.sleep(0.3)
        answers["/ok"] = b"200 OK"
        await asyncio.sleep(0.3)
    finally:
        await checker.stop()
    assert checker.probes >= 8
    assert updates == ["critical", "passing"]  # the output first (404), then the change
    checker.follow([])
    assert checker.checks == 0


async def test_a_restarted_sidecar_starts_from_the_stored_verdict(
        web: tuple[int, dict[str, bytes]]) -> None:
    """The stored instance says passing: until the first probe says otherwise, so does the
    overlay (a restart does not make every instance critical); a stored check that is not the
    same check (another target) is not taken."""
    port, _ = web
    declared = Instance(service="web", id="w1", address="127.0.0.1", port=port, lease="l",
                        checks=(http_check(port, "/ok", interval=60),))
    stored = Instance(service="web", id="w1", address="127.0.0.1", port=port, lease="old",
                      checks=(Check(id="http", name="x", kind="http", status="passing",
                                    output="fine", changed=5.0, target=declared.checks[0].target,
                                    interval=60, timeout=1.0),))
    checker = Checker(lambda: None)
    checker.follow([("c1", declared)])
    checker.seed([stored])
    seeded = checker.overlay(declared)
    assert (seeded.checks[0].status, seeded.checks[0].output) == ("passing", "fine")
    assert checker.overlay(declared) is seeded  # unchanged verdicts: the same instance

    other = Checker(lambda: None)
    other.follow([("c1", declared)])
    elsewhere = http_check(port + 1, "/ok", interval=60)
    other.seed([Instance(service="web", id="w1", address="127.0.0.1", port=port, lease="old",
                         checks=(Check(id="http", name="x", kind="http", status="passing",
                                       target=elsewhere.target, interval=60, timeout=1.0),))])
    assert other.overlay(declared).checks[0].status == "critical"
