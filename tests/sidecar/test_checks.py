"""Health checks run by the sidecar, on a real Docker engine with real HTTP and TCP servers in
busybox containers, registering straight into the embedded backend (in this process) and into
etcd: an HTTP check that 404s, one that recovers, a TCP check nobody answers, a script check
through `docker exec`, a bad label, and a container withdrawn at its `kill` event.

Containers run on the host network (the test engine has no bridge), so the container's own
address is 127.0.0.1 and its port a real listener there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from pilotfish.catalog import Catalog, Instance, Snapshot, open_catalog
from pilotfish.catalog.model import Check
from pilotfish.sidecar.containers import Rules
from pilotfish.sidecar.sidecar import Sidecar, SidecarSettings
from tests.fixtures.docker import DockerEngine
from tests.fixtures.etcd import EtcdServer
from tests.fixtures.servers import free_port
from tests.fixtures.watching import wait_until
from tests.sidecar.harness import ADVERTISE

pytestmark = pytest.mark.slow

INTERVAL = 0.3  # seconds between probes in these tests
PROMPT = INTERVAL + 1.0  # a verdict within one interval, with room for a busy machine


@pytest.fixture(params=["memory", "etcd"])
async def catalog(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Catalog]:
    """The embedded backend, or the session's etcd under a prefix of its own."""
    if request.param == "memory":
        url = "memory://"
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        url = server.url(f"ck-{unique}")
    opened = await open_catalog(url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sidecar(catalog: Catalog, docker: DockerEngine, unique: str) -> AsyncIterator[Sidecar]:
    """A sidecar in this process, following the test engine, registering into `catalog`."""
    running = Sidecar(catalog, SidecarSettings(Rules(f"s{unique}", ADVERTISE),
                                               docker=docker.host, ttl=3))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def run_web(docker: DockerEngine, name: str, port: int, *labels: str) -> str:
    """busybox httpd serving /tmp on 127.0.0.1:port, with SERVICE_* labels."""
    args = [a for label in labels for a in ("-l", label)]
    return docker.run("--network", "host", "--name", name, "--expose", str(port), *args,
                      command=("httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/tmp"))


def one(snapshot: Snapshot, service: str) -> Instance | None:
    """The service's only instance (None while there is none)."""
    found = snapshot.service(service)
    return found[0] if len(found) == 1 else None


def status(service: str, check_id: str, wanted: str) -> Callable[[Snapshot], bool]:
    """A predicate: the service's instance has that check with that status."""
    def predicate(snapshot: Snapshot) -> bool:
        instance = one(snapshot, service)
        return instance is not None and any(
            c.id == check_id and c.status == wanted for c in instance.checks)
    return predicate


def check(snapshot: Snapshot, service: str, check_id: str) -> Check:
    """The service's instance's check of that id."""
    instance = one(snapshot, service)
    assert instance is not None
    return next(c for c in instance.checks if c.id == check_id)


async def test_an_http_check_that_404s_is_critical_and_one_that_recovers_comes_back(
    sidecar: Sidecar, catalog: Catalog, docker: DockerEngine, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pilotfish.sidecar")
    service, port = f"web-{unique}", free_port()
    run_web(docker, f"w-{unique}", port, f"SERVICE_NAME={service}", "SERVICE_CHECK_HTTP=/ok",
            f"SERVICE_CHECK_INTERVAL={INTERVAL}s")
    snapshot = await wait_until(catalog, lambda s: one(s, service) is not None, 5)
    (web,) = snapshot.service(service)
    assert not web.serving  # critical until a probe passes (Consul's initial status)
    snapshot = await wait_until(catalog, lambda s: "404" in check(s, service, "http").output
                                if one(s, service) else False, 5)
    http = check(snapshot, service, "http")
    assert http.status == "critical" and http.target == f"http://127.0.0.1:{port}/ok"
    assert not snapshot.service(service)[0].serving

    docker.docker("exec", f"w-{unique}", "touch", "/tmp/ok")
    started = time.monotonic()
    snapshot = await wait_until(catalog, status(service, "http", "passing"), 5)
    assert time.monotonic() - started < PROMPT
    assert snapshot.service(service)[0].serving and "200" in check(snapshot, service,
                                                                   "http").output
    docker.docker("exec", f"w-{unique}", "rm", "/tmp/ok")
    started = time.monotonic()
    await wait_until(catalog, status(service, "http", "critical"), 5)
    assert time.monotonic() - started < PROMPT

    logged = caplog.text
    assert f"added: s{unique}:w-{unique}:{port} {service}" in logged
    assert f"passing: s{unique}:w-{unique}:{port}" in logged
    assert f"critical: s{unique}:w-{unique}:{port} {service} (http: HTTP GET" in logged
    docker.remove(f"w-{unique}")
    await wait_until(catalog, lambda s: not s.service(service), 5)
    assert f"removed: s{unique}:w-{unique}:{port} (container die)" in caplog.text


async def test_a_tcp_check_nobody_answers_and_a_script_check_by_exit_code(
    sidecar: Sidecar, catalog: Catalog, docker: DockerEngine, unique: str,
) -> None:
    deaf, port = f"deaf-{unique}", free_port()
    docker.run("--network", "host", "--name", f"d-{unique}", "-l", f"SERVICE_NAME={deaf}",
               "-l", f"SERVICE_PORT={port}", "-l", "SERVICE_CHECK_TCP=true",
               "-l", f"SERVICE_CHECK_INTERVAL={INTERVAL}s")
    scripted = f"script-{unique}"
    docker.run("--network", "host", "--name", f"x-{unique}", "-l", f"SERVICE_NAME={scripted}",
               "-l", f"SERVICE_PORT={free_port()}",
               "-l", "SERVICE_CHECK_SCRIPT=echo code $(cat /tmp/code); exit $(cat /tmp/code)",
               "-l", f"SERVICE_CHECK_INTERVAL={INTERVAL}s",
               "-l", "SERVICE_CHECK_INITIAL_STATUS=passing")
    snapshot = await wait_until(catalog, lambda s: one(s, deaf) is not None and (
        "refused" in check(s, deaf, "tcp").output.lower()), 5)
    assert check(snapshot, deaf, "tcp").status == "critical"
    assert not snapshot.service(deaf)[0].serving

    # The script exits with the code in /tmp/code: 1 is warning, 2 critical, 0 passing.
    for code, wanted, served in (("1", "warning", True), ("2", "critical", False),
                                 ("0", "passing", True)):
        docker.docker("exec", f"x-{unique}", "sh", "-c", f"echo {code} > /tmp/code")
        snapshot = await wait_until(catalog, status(scripted, "script", wanted), 5)
        (instance,) = snapshot.service(scripted)
        assert instance.serving is served  # warning is still served (only_passing = false)
        assert f"code {code}" in check(snapshot, scripted, "script").output


async def test_a_bad_check_label_registers_the_instance_critical_saying_why(
    sidecar: Sidecar, catalog: Catalog, docker: DockerEngine, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pilotfish.sidecar")
    service = f"bad-{unique}"
    docker.run("--network", "host", "--name", f"b-{unique}", "-l", f"SERVICE_NAME={service}",
               "-l", f"SERVICE_PORT={free_port()}", "-l", "SERVICE_CHECK_HTTP=health")
    snapshot = await wait_until(catalog, lambda s: one(s, service) is not None, 5)
    (instance,) = snapshot.service(service)
    (bad,) = instance.checks
    assert (bad.kind, bad.status) == ("sidecar", "critical") and not instance.serving
    assert "SERVICE_CHECK_HTTP='health' must be a path" in bad.output
    assert f"b-{unique}: {instance.id} registered critical: bad check setting" in caplog.text


async def test_a_stopping_container_is_withdrawn_at_its_kill_event_not_at_death(
    sidecar: Sidecar, catalog: Catalog, docker: DockerEngine, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app that drains for 2 s after SIGTERM: critical (with a `docker` check saying why)
    within a moment of `docker stop`, while it still runs; removed when it dies."""
    caplog.set_level(logging.INFO, logger="pilotfish.sidecar")
    service, port = f"drain-{unique}", free_port()
    docker.run("--network", "host", "--name", f"s-{unique}", "-l", f"SERVICE_NAME={service}",
               "-l", f"SERVICE_PORT={port}",
               command=("sh", "-c", "trap 'sleep 2; exit 0' TERM; while true; do sleep 0.1; "
                                    "done"))
    await wait_until(catalog, lambda s: one(s, service) is not None, 5)
    stopping = asyncio.create_task(asyncio.to_thread(docker.stop_containers, f"s-{unique}",
                                                     grace=10))
    started = time.monotonic()
    snapshot = await wait_until(catalog, lambda s: (i := one(s, service)) is not None
                                and not i.serving, 5)
    marked = time.monotonic() - started
    (instance,) = snapshot.service(service)
    assert instance.health == "critical"
    assert "container stopping (signal 15)" in check(snapshot, service, "docker").output
    assert not stopping.done() and marked < 1.0  # withdrawn while the app drains
    await stopping
    await wait_until(catalog, lambda s: not s.service(service), 5)
    assert f"critical: {instance.id} {service} (docker: container stopping" in caplog.text
    assert f"removed: {instance.id} (container die)" in caplog.text
