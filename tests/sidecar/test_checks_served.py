"""What consumers see of the sidecar's checks: `pilotfish up --docker --route` (embedded
backend, DNS, LB and sidecar in one process) on the real Docker engine. An instance whose HTTP
check fails is not in DNS until it passes; an app stopped while it drains for 3 s gets no new
LB connection after its `kill` event, and no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import StartPilotfish
from tests.fixtures.servers import free_port
from tests.sidecar.harness import ADVERTISE, STARTUP, Registry, dns_timed

pytestmark = pytest.mark.slow


@pytest.fixture
def up(docker: DockerEngine, pilotfish: StartPilotfish, unique: str) -> Iterator[
        tuple[Registry, int]]:
    """`pilotfish up` with the sidecar on the test engine and one LB route to `lb-<unique>`."""
    listen = free_port()
    process = pilotfish("up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0",
                        "--docker", docker.host, "--advertise-ip", ADVERTISE,
                        "--sidecar-id", f"s{unique}", "--route",
                        f"127.0.0.1:{listen}=lb-{unique}", "--lb-api", "off",
                        expect=("registry API", "dns"), timeout=STARTUP)
    yield Registry(process), listen


def web(docker: DockerEngine, name: str, service: str, port: int, *labels: str,
        drain: float = 0.0) -> str:
    """busybox httpd answering `name` on 127.0.0.1:port; with `drain`, it keeps serving that
    long after SIGTERM before it exits (as an app finishing its work would)."""
    serve = (f"echo {name} > /tmp/index.html; httpd -f -p 127.0.0.1:{port} -h /tmp & pid=$!; "
             f"trap 'sleep {drain}; kill $pid; exit 0' TERM; while true; do sleep 0.1; done")
    args = [a for label in (f"SERVICE_NAME={service}", *labels) for a in ("-l", label)]
    return docker.run("--network", "host", "--name", name, "--expose", str(port), *args,
                      command=("sh", "-c", serve))


async def test_a_failing_http_check_keeps_the_instance_out_of_dns_until_it_passes(
    up: tuple[Registry, int], docker: DockerEngine, unique: str,
) -> None:
    registry, _ = up
    good, bad = f"good-{unique}", f"bad-{unique}"
    web(docker, f"g-{unique}", good, free_port(), "SERVICE_CHECK_HTTP=/index.html",
        "SERVICE_CHECK_INTERVAL=300ms")
    web(docker, f"b-{unique}", bad, free_port(), "SERVICE_CHECK_HTTP=/health",
        "SERVICE_CHECK_INTERVAL=300ms")
    await dns_timed(registry, good, [ADVERTISE], 5)
    await asyncio.sleep(1.0)  # three probes of the bad one: all 404
    assert await asyncio.to_thread(registry.addresses, bad) == []
    docker.docker("exec", f"b-{unique}", "touch", "/tmp/health")
    took = await dns_timed(registry, bad, [ADVERTISE], 5)
    assert took < 1.0


async def test_a_draining_app_gets_no_new_connection_after_docker_stop(
    up: tuple[Registry, int], docker: DockerEngine, unique: str,
) -> None:
    registry, listen = up
    service = f"lb-{unique}"
    web(docker, f"a-{unique}", service, free_port(), drain=3.0)
    web(docker, f"b-{unique}", service, free_port())
    answers: list[tuple[float, str]] = []
    failures: list[str] = []

    def fetch() -> None:
        started = time.monotonic()
        try:
            answer = httpx.get(f"http://127.0.0.1:{listen}/", timeout=2)
            answers.append((started, answer.text.strip()))
        except httpx.HTTPError as exc:
            failures.append(repr(exc))

    deadline = time.monotonic() + 10
    while {text for _, text in answers} != {f"a-{unique}", f"b-{unique}"}:
        assert time.monotonic() < deadline, f"the LB reached only {answers[-5:]}"
        with contextlib.suppress(httpx.HTTPError):
            await asyncio.to_thread(fetch)
    failures.clear()
    stopped = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(docker.stop_containers, f"a-{unique}",
                                                     grace=10))
    while not stopping.done():
        await asyncio.to_thread(fetch)
    drained = time.monotonic() - stopped
    late = [t - stopped for t, text in answers if t > stopped + 0.5 and text == f"a-{unique}"]
    assert drained > 2.5  # the app drained while requests went on
    assert late == [] and failures == []
    assert any(t > stopped + 0.5 for t, _ in answers)


async def test_a_ttl_report_survives_the_sidecar_putting_the_instance_again(
    up: tuple[Registry, int], docker: DockerEngine, unique: str,
) -> None:
    """The app reports its ttl check through the REST API; when the sidecar re-registers the
    instance (its HTTP check changed), the report stays."""
    registry, _ = up
    service, port = f"ttl-{unique}", free_port()
    web(docker, f"t-{unique}", service, port, "SERVICE_CHECK_TTL=30s",
        "SERVICE_CHECK_HTTP=/health", "SERVICE_CHECK_INTERVAL=200ms")
    instance_id = f"s{unique}:t-{unique}:{port}"
    base = f"{registry.url}/v1/services/{service}/instances/{instance_id}"

    async def checks() -> dict[str, tuple[str, str]]:
        answer = await asyncio.to_thread(httpx.get, f"{registry.url}/v1/services/{service}",
                                         timeout=5)
        found = [i for i in answer.json().get("instances", []) if i["id"] == instance_id]
        return {c["id"]: (c["status"], c["output"]) for c in found[0]["checks"]} if found \
            else {}

    async def until(wanted: dict[str, str]) -> dict[str, tuple[str, str]]:
        deadline = time.monotonic() + 5
        while True:
            got = await checks()
            if all(got.get(k, ("",))[0] == v for k, v in wanted.items()):
                return got
            assert time.monotonic() < deadline, f"{got} never {wanted}"
            await asyncio.sleep(0.05)

    await until({"ttl": "critical", "http": "critical"})
    reported = await asyncio.to_thread(httpx.put, f"{base}/checks/ttl/pass?note=all+good",
                                       timeout=5)
    assert reported.status_code == 200, reported.text
    await until({"ttl": "passing"})
    docker.docker("exec", f"t-{unique}", "touch", "/tmp/health")
    got = await until({"http": "passing"})  # the sidecar put the instance again
    assert got["ttl"] == ("passing", "all good")
    assert await asyncio.to_thread(registry.addresses, service) == [ADVERTISE]
