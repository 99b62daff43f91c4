"""The sidecar end to end on a real Docker engine: `docker run` to DNS answer and back, Docker
health, the sidecar killed and restarted, dockerd restarted and killed, the registry down.

Every sidecar here finds the engine through DOCKER_HOST (as the docker CLI would), registers
into a `pilotfish up` registry (API + DNS) or straight into etcd, and advertises 127.0.0.1:
containers run with `--network host`, so their ports are real listeners on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from pilotfish.catalog import Catalog, open_catalog
from tests.fixtures.docker import DockerEngine, DockerError
from tests.fixtures.etcd import EtcdServer
from tests.fixtures.process import StartPilotfish, start_pilotfish
from tests.fixtures.servers import free_port
from tests.fixtures.watching import eventually, ids, wait_until, wait_until_back
from tests.sidecar.harness import (
    ADVERTISE,
    STARTUP,
    Registry,
    dns_timed,
    metric,
    serving,
    sidecar_http,
    start_registry,
    start_sidecar,
    timed,
)

pytestmark = pytest.mark.slow

TTL = 2
PROMPT = 1.0  # "within 1 s" of the issue


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """One registry with DNS for the module; tests use service names of their own."""
    registry = start_registry()
    try:
        yield registry
    finally:
        registry.process.stop()


@pytest.fixture
async def reader(registry: Registry) -> AsyncIterator[Catalog]:
    """The registry as a catalog, to follow what the sidecar registered."""
    catalog = await open_catalog(registry.url)
    try:
        yield catalog
    finally:
        await catalog.close()


def run_web(docker: DockerEngine, container: str, service: str, port: int,
            *args: str) -> str:
    """A real HTTP backend (busybox httpd on 127.0.0.1:port, host network) named `service`."""
    return docker.run("--network", "host", "--name", container, "-e", f"SERVICE_NAME={service}",
                      "--expose", str(port), *args,
                      command=("httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/"))


def run_sleeper(docker: DockerEngine, container: str, service: str, port: int,
                *args: str) -> str:
    """A container that only sleeps, registered as `service` on `port` (SERVICE_PORT)."""
    return docker.run("--network", "host", "--name", container, "-l", f"SERVICE_NAME={service}",
                      "-l", f"SERVICE_PORT={port}", *args)


async def test_run_is_served_within_a_second_and_stop_and_rm_withdraw_it(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    sidecar_id = f"s{unique}"
    sidecar = start_sidecar(pilotfish, registry.url, docker, sidecar_id)
    service, port = f"web-{unique}", free_port()

    run_web(docker, f"w1-{unique}", service, port)
    started = time.monotonic()
    took, snapshot = await timed(reader, lambda s: len(serving(s, service)) == 1, 5)
    await dns_timed(registry, service, [ADVERTISE], 5)
    answered = time.monotonic() - started
    print(f"docker run -> catalog {took * 1000:.0f} ms, -> DNS {answered * 1000:.0f} ms")
    assert took < PROMPT and answered < PROMPT
    (web,) = snapshot.service(service)
    assert (web.id, web.address, web.port) == (f"{sidecar_id}:w1-{unique}:{port}", ADVERTISE, port)
    answer = await asyncio.to_thread(httpx.get, f"http://{web.address}:{web.port}/")
    assert answer.status_code in (200, 403, 404)  # a real HTTP server answered

    docker.stop_containers(f"w1-{unique}")
    stopped = time.monotonic()
    took, _ = await timed(reader, lambda s: not s.service(service), 5)
    await dns_timed(registry, service, [], 5)
    print(f"docker stop -> withdrawn {took * 1000:.0f} ms, "
          f"-> DNS {(time.monotonic() - stopped) * 1000:.0f} ms")
    assert time.monotonic() - stopped < PROMPT

    # A second web, a container joined to its network, and one with no network at all.
    run_web(docker, f"w2-{unique}", service, port)
    docker.run("--network", f"container:w2-{unique}", "--name", f"j-{unique}",
               "-e", f"SERVICE_NAME=joined-{unique}")
    docker.run("--network", "none", "--name", f"n-{unique}", "-e", f"SERVICE_NAME=none-{unique}",
               "--expose", "80")
    snapshot = await wait_until(reader, lambda s: len(s.service(service)) == 1
                                and len(s.service(f"joined-{unique}")) == 1, 5)
    (joined,) = snapshot.service(f"joined-{unique}")
    assert (joined.address, joined.port) == (ADVERTISE, port)
    assert not snapshot.service(f"none-{unique}")
    assert metric(sidecar, 'pilotfish_sidecar_skipped{reason="network-none"}') == 1

    # A rename moves the registration to the new stable id.
    docker.docker("rename", f"w2-{unique}", f"w3-{unique}")
    await wait_until(reader, lambda s: ids(s, service) == {f"{sidecar_id}:w3-{unique}:{port}"}, 5)

    docker.remove(f"w3-{unique}")
    removed = time.monotonic()
    took, _ = await timed(reader, lambda s: not s.service(service)
                          and not s.service(f"joined-{unique}"), 5)
    await dns_timed(registry, service, [], 5)
    print(f"docker rm -f -> withdrawn {took * 1000:.0f} ms")
    assert time.monotonic() - removed < PROMPT
    assert metric(sidecar, 'pilotfish_sidecar_events_total{action="start"}') >= 4
    assert metric(sidecar, "pilotfish_sidecar_in_sync") == 1


@contextlib.contextmanager
def internal_network(docker: DockerEngine, name: str) -> Iterator[str]:
    """A user-defined bridge network with no way out (--internal), removed afterwards: a
    container on it has a network namespace of its own, unlike --network host."""
    for attempt in range(5):
        subnet = f"10.251.{random.randrange(100, 250)}.0/24"
        try:
            docker.docker("network", "create", "--internal", "--subnet", subnet, name)
            break
        except DockerError:  # that subnet is taken (another engine's network)
            if attempt == 4:
                raise
    try:
        yield name
    finally:
        with contextlib.suppress(DockerError):
            docker.remove_all()
        docker.docker("network", "rm", name)


async def test_a_joiner_left_in_its_owners_dead_namespace_is_not_registered_again(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    """`--network container:<owner>`: the owner restarts into a new namespace, Docker leaves
    the joiner in the old one (only `lo` left). The joiner is withdrawn and stays so until it
    is itself restarted. Also: SERVICE_NAME owner_<id> is registered as owner-<id>, logged once
    although the owner is decided again at every event."""
    owner, joiner = f"owner-{unique}", f"joiner-{unique}"
    with internal_network(docker, f"pf-{unique}") as network:
        sidecar = start_sidecar(pilotfish, registry.url, docker, f"s{unique}", "--internal")
        docker.run("--network", network, "--name", owner, "--expose", "8080",
                   "-l", f"SERVICE_NAME=owner_{unique}")
        docker.run("--network", f"container:{owner}", "--name", joiner,
                   "-l", f"SERVICE_NAME={joiner}")
        snapshot = await wait_until(reader, lambda s: len(s.service(owner)) == 1
                                    and len(s.service(joiner)) == 1, 10)
        (first,) = snapshot.service(owner)
        (joined,) = snapshot.service(joiner)
        assert (joined.address, joined.port) == (first.address, 8080)

        docker.docker("restart", "-t", "0", owner)
        assert "eth0" not in docker.docker("exec", joiner, "cat", "/proc/net/dev")
        starts = 'pilotfish_sidecar_events_total{action="start"}'
        deadline = time.monotonic() + 10
        while metric(sidecar, starts) < 3:  # the owner, the joiner, the owner again
            assert time.monotonic() < deadline, "the sidecar never saw the owner restart"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the inspects that start brings have been applied
        snapshot = await wait_until(reader, lambda s: len(s.service(owner)) == 1, 5)
        assert not snapshot.service(joiner), "the joiner came back in a dead namespace"
        stale = 'pilotfish_sidecar_skipped{reason="joined-stale"}'
        assert metric(sidecar, stale) == 1

        docker.docker("restart", "-t", "0", joiner)
        assert "eth0" in docker.docker("exec", joiner, "cat", "/proc/net/dev")
        await wait_until(reader, lambda s: len(s.service(joiner)) == 1, 10)
        assert metric(sidecar, stale) == 0
        renamed = [line for line in sidecar.lines
                   if f"SERVICE_NAME 'owner_{unique}' is registered as 'owner-{unique}'" in line]
        assert len(renamed) == 1, renamed


async def test_docker_health_decides_what_is_served(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    start_sidecar(pilotfish, registry.url, docker, f"s{unique}")
    service, container = f"hc-{unique}", f"hc-{unique}"
    run_sleeper(docker, container, service, free_port(), "--health-cmd", "cat /tmp/ok",
                "--health-interval", "1s", "--health-retries", "1", "--health-timeout", "1s")

    def health(state: str) -> object:
        return lambda s: [i.health for i in s.service(service)] == [state]

    # Starting, then failing: registered, but critical, and DNS does not hand it out.
    await wait_until(reader, health("critical"), 5)
    assert await asyncio.to_thread(registry.addresses, service) == []
    docker.docker("exec", container, "touch", "/tmp/ok")
    await wait_until(reader, health("passing"), 8)
    await dns_timed(registry, service, [ADVERTISE], 2)
    docker.docker("exec", container, "rm", "/tmp/ok")
    await wait_until(reader, health("critical"), 8)
    await dns_timed(registry, service, [], 2)
    docker.docker("exec", container, "touch", "/tmp/ok")
    await wait_until(reader, health("passing"), 8)
    await dns_timed(registry, service, [ADVERTISE], 2)

    docker.docker("pause", container)
    await wait_until(reader, health("critical"), 5)
    docker.docker("unpause", container)
    await wait_until(reader, health("passing"), 8)


async def test_sidecar_killed_restarted_and_stopped(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    sidecar_id, service = f"s{unique}", f"k-{unique}"
    ports = {name: free_port() for name in "abc"}

    def want(*names: str) -> set[str]:
        return {f"{sidecar_id}:{name}-{unique}:{ports[name]}" for name in names}

    first = start_sidecar(pilotfish, registry.url, docker, sidecar_id, ttl=TTL)
    for name in "ab":
        run_sleeper(docker, f"{name}-{unique}", service, ports[name])
    await wait_until(reader, lambda s: ids(s, service) == want("a", "b"), 5)

    # SIGKILL: nobody renews the lease, everything goes within TTL + 1 s.
    first.stop(signal.SIGKILL)
    took, _ = await timed(reader, lambda s: not s.service(service), TTL + 3)
    print(f"sidecar SIGKILLed -> withdrawn after {took:.2f}s (ttl {TTL}s)")
    assert took < TTL + 1.0

    # Containers change while no sidecar runs; the next one reconciles: b and c, once each.
    docker.remove(f"a-{unique}")
    run_sleeper(docker, f"c-{unique}", service, ports["c"])
    second = start_sidecar(pilotfish, registry.url, docker, sidecar_id, ttl=TTL)
    snapshot = await wait_until(reader, lambda s: ids(s, service) == want("b", "c"), 5)
    assert len(snapshot.service(service)) == 2

    # Killed again and replaced at once (its lease still alive): the successor claims the
    # old registrations, withdrawing c (removed meanwhile) now rather than after the TTL.
    second.stop(signal.SIGKILL)
    docker.remove(f"c-{unique}")
    third = start_sidecar(pilotfish, registry.url, docker, sidecar_id, "--keep-on-exit",
                          ttl=TTL)
    took, _ = await timed(reader, lambda s: ids(s, service) == want("b"), TTL)
    assert took < TTL - 0.5

    # --keep-on-exit: SIGTERM leaves them to lapse after the TTL.
    assert third.stop() == 0
    assert ids(await reader.snapshot(), service) == want("b")
    await wait_until(reader, lambda s: not s.service(service), TTL + 2)

    # By default SIGTERM withdraws at once.
    fourth = start_sidecar(pilotfish, registry.url, docker, sidecar_id, ttl=TTL)
    await wait_until(reader, lambda s: ids(s, service) == want("b"), 5)
    assert fourth.stop() == 0
    assert "are withdrawn" in "".join(fourth.lines)
    await wait_until(reader, lambda s: not s.service(service), PROMPT)


async def test_dockerd_restarted_and_killed_while_the_sidecar_runs(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    sidecar_id, service = f"s{unique}", f"d-{unique}"
    sidecar = start_sidecar(pilotfish, registry.url, docker, sidecar_id, ttl=TTL)
    ports = {"always": free_port(), "once": free_port()}
    run_sleeper(docker, f"always-{unique}", service, ports["always"], "--restart", "always",
                "--stop-timeout", "1")
    run_sleeper(docker, f"once-{unique}", service, ports["once"], "--stop-timeout", "1")
    await wait_until(reader, lambda s: len(s.service(service)) == 2, 5)

    def running() -> set[str]:
        names = docker.docker("ps", "--format", "{{.Names}}").split()
        return {f"{sidecar_id}:{n}:{ports[n.split('-')[0]]}" for n in names if unique in n}

    async def matches_docker(timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while True:
            expected = await asyncio.to_thread(running)
            if ids(await reader.snapshot(), service) == expected:
                return expected
            assert time.monotonic() < deadline, (expected, ids(await reader.snapshot(), service))
            await asyncio.sleep(0.1)

    # A clean restart: Docker stops both, starts "always" again; the sidecar follows.
    docker.restart(signal.SIGTERM)
    assert await matches_docker(15) == {f"{sidecar_id}:always-{unique}:{ports['always']}"}
    await eventually(lambda: metric(sidecar, "pilotfish_sidecar_reconnects_total") >= 1, 5,
                     "reconnect counted")

    # SIGKILL, down for longer than the TTL: the sidecar stops vouching, the lease lapses,
    # nothing stays served; once dockerd is back the catalog matches what runs.
    docker.kill(signal.SIGKILL)
    killed = time.monotonic()
    took, _ = await timed(reader, lambda s: not s.service(service), TTL * 2 + 2)
    print(f"dockerd SIGKILLed -> withdrawn after {took:.2f}s (ttl {TTL}s)")
    assert took <= TTL + TTL / 3 + 1.0
    await asyncio.sleep(max(0.0, killed + TTL + 1.5 - time.monotonic()))
    assert not (await reader.snapshot()).service(service)
    health = await asyncio.to_thread(httpx.get, sidecar_http(sidecar) + "/health")
    assert health.status_code == 503 and health.json()["docker"] == "down"
    assert metric(sidecar, "pilotfish_sidecar_docker_up") == 0
    docker.start()
    await matches_docker(20)
    await eventually(lambda: metric(sidecar, "pilotfish_sidecar_in_sync") == 1, 10, "in sync")


async def test_a_frozen_dockerd_is_not_vouched_for(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    """dockerd stopped with SIGSTOP: the event stream stays open but Docker answers nothing,
    so the sidecar stops renewing and the lease lapses; after SIGCONT it renews and
    registers again."""
    sidecar_id, service = f"s{unique}", f"f-{unique}"
    sidecar = start_sidecar(pilotfish, registry.url, docker, sidecar_id, ttl=TTL)
    run_sleeper(docker, f"f-{unique}", service, free_port())
    await wait_until(reader, lambda s: len(s.service(service)) == 1, 5)
    assert docker.process is not None
    docker.process.send_signal(signal.SIGSTOP)
    try:
        took, _ = await timed(reader, lambda s: not s.service(service), TTL * 2 + 2)
        print(f"dockerd frozen -> withdrawn after {took:.2f}s (ttl {TTL}s)")
        assert took <= TTL + TTL / 3 + 1.0
    finally:
        docker.process.send_signal(signal.SIGCONT)
    await wait_until(reader, lambda s: len(s.service(service)) == 1, 10)
    assert metric(sidecar, "pilotfish_sidecar_lease_reregistrations_total") >= 1


async def test_registry_down_while_containers_change(
    docker: DockerEngine, pilotfish: StartPilotfish, unique: str,
) -> None:
    """The sidecar writes straight to etcd; etcd dies for longer than a keepalive interval
    while one container starts and another is removed; once etcd is back the catalog
    holds exactly what runs."""
    sidecar_id, service = f"s{unique}", f"r-{unique}"
    ports = {name: free_port() for name in "abc"}
    ttl = 6  # longer than the outage: the lease survives, the writes must be retried

    def want(*names: str) -> set[str]:
        return {f"{sidecar_id}:{name}-{unique}:{ports[name]}" for name in names}

    with EtcdServer() as etcd:
        url = etcd.url(f"sc-{unique}")
        sidecar = start_sidecar(pilotfish, url, docker, sidecar_id, ttl=ttl)
        reader = await open_catalog(url)
        try:
            for name in "ab":
                run_sleeper(docker, f"{name}-{unique}", service, ports[name])
            await wait_until(reader, lambda s: ids(s, service) == want("a", "b"), 5)

            etcd.stop_member(0, signal.SIGKILL)
            down = time.monotonic()
            docker.remove(f"a-{unique}")
            run_sleeper(docker, f"c-{unique}", service, ports["c"])
            await asyncio.sleep(max(0.0, down + ttl / 3 + 1.0 - time.monotonic()))
            etcd.start_member(0)

            await wait_until_back(reader, lambda s: ids(s, service) == want("b", "c"), 15)
            assert metric(sidecar, "pilotfish_sidecar_registry_errors_total") > 0
            await eventually(lambda: metric(sidecar, "pilotfish_sidecar_in_sync") == 1, 10,
                             "in sync")
        finally:
            await reader.close()


async def test_up_with_docker_serves_containers_in_dns(
    docker: DockerEngine, pilotfish: StartPilotfish, unique: str,
) -> None:
    """`pilotfish up --docker`: API, DNS and sidecar in one process; with --explicit, a
    container without SERVICE_NAME is left out (it would be named after its image)."""
    up = pilotfish("up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--docker", docker.host,
                   "--advertise-ip", ADVERTISE, "--sidecar-id", f"s{unique}", "--explicit",
                   expect=("registry API", "dns"), timeout=STARTUP)
    registry = Registry(up)
    docker.run("--network", "host", "--name", f"anon-{unique}", "--expose", str(free_port()))
    run_sleeper(docker, f"u-{unique}", f"up-{unique}", free_port())
    await dns_timed(registry, f"up-{unique}", [ADVERTISE], 5)
    catalog = await open_catalog(registry.url)
    try:
        assert not (await catalog.snapshot()).service("pf-busybox")
    finally:
        await catalog.close()


async def test_route_balances_to_the_containers_the_sidecar_registered(
    docker: DockerEngine, registry: Registry, reader: Catalog, pilotfish: StartPilotfish,
    unique: str,
) -> None:
    """`pilotfish sidecar --route 127.0.0.1:P=SERVICE`: the LB (pilotfish/lb, the same
    component `pilotfish lb` runs) beside the sidecar reaches the containers it registered,
    and stops sending there once they stop."""
    service, listen = f"rt-{unique}", free_port()
    start_sidecar(pilotfish, registry.url, docker, f"s{unique}",
                  "--route", f"127.0.0.1:{listen}={service}", "--lb-api", "off")
    ports = [free_port(), free_port()]
    for n, port in enumerate(ports):
        docker.run("--network", "host", "--name", f"rt{n}-{unique}", "-e",
                   f"SERVICE_NAME={service}", "--expose", str(port),
                   command=("sh", "-c", f"echo backend-{n} > /tmp/index.html; "
                                        f"exec httpd -f -p 127.0.0.1:{port} -h /tmp"))
    await wait_until(reader, lambda s: len(s.service(service)) == 2, 5)

    async def fetch() -> str:
        answer = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{listen}/", timeout=2)
        return answer.text.strip()

    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while seen != {"backend-0", "backend-1"}:
        assert time.monotonic() < deadline, f"the LB reached only {seen}"
        with contextlib.suppress(httpx.HTTPError):
            seen.add(await fetch())
        await asyncio.sleep(0.05)

    docker.remove(f"rt0-{unique}", f"rt1-{unique}")
    await wait_until(reader, lambda s: not s.service(service), 5)

    async def refused() -> bool:
        try:
            await fetch()
        except httpx.HTTPError:
            return True
        return False

    await eventually(refused, 5, "LB refusing once no container serves")


@pytest.mark.parametrize(("args", "says"), [
    ((), "--advertise-ip is required"),
    (("--advertise-ip", "0.0.0.0"), "--advertise-ip: 0.0.0.0 is the unspecified address"),
    (("--advertise-ip", "ff02::1"), "--advertise-ip: ff02::1 is a multicast address"),
    (("--advertise-ip", "10.0.0.1", "--ttl", "1"), "--ttl: 1 is out of range"),
    (("--advertise-ip", "10.0.0.1", "--sidecar-id", "bad:id"), "--sidecar-id: 'bad:id'"),
])
def test_bad_flags_are_refused_naming_the_flag(args: tuple[str, ...], says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pilotfish", "sidecar", *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert says in result.stderr, result.stderr


def test_up_without_docker_runs_no_sidecar() -> None:
    with start_pilotfish("up", "--api", "127.0.0.1:0", "--dns", "off", timeout=STARTUP) as up:
        assert "sidecar" not in "".join(up.lines)
