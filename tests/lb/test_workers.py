"""The LB with `--workers 2`: both workers serve every route, and a route's state is the
machine's: least-connections and limits count every worker's connections, an ejection made by
one is kept by all, routes from the API and SIGHUP reach both, a killed worker is restarted
while the other's connections carry on."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.servers import HOST, free_port
from tests.lb.conftest import Backend, Lb, start_lb
from tests.lb.load import exchange

FLAGS = ("--workers", "2", "--lb-check-interval", "0", "--lb-eject-after", "1",
         "--lb-eject-time", "30")
_PID = re.compile(r"pid=(\d+)")


def workers(lb: Lb, count: int = 2, timeout: float = 15.0,
            not_in: frozenset[int] = frozenset()) -> list[int]:
    """The worker processes' pids, once `count` of them serve (none of `not_in`)."""
    deadline = time.monotonic() + timeout
    pid = lb.process.process.pid
    while True:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) == count and not not_in & {int(c) for c in children} and \
                lb.metric("pilotfish_workers") == count:
            return [int(c) for c in children]
        assert time.monotonic() < deadline, f"workers: {children}"
        time.sleep(0.05)


def holder(route_port: int, sock: socket.socket) -> int:
    """The pid of the process holding the server side of a client's connection to the LB."""
    client_port = sock.getsockname()[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established",
                          f"( sport = :{route_port} and dport = :{client_port} )"],
                         capture_output=True, text=True, check=True).stdout
    found = _PID.search(out)
    assert found, out
    return int(found.group(1))


async def hold(port: int) -> tuple[socket.socket, str]:
    """A connection kept open, with the name of the backend it reached ("" when refused)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    data = b""
    try:
        await loop.sock_connect(sock, (HOST, port))  # refused: ConnectionRefusedError
        async with asyncio.timeout(5):
            while b"\n" not in data:
                chunk = await loop.sock_recv(sock, 100)
                if not chunk:
                    break
                data += chunk
    except (ConnectionResetError, BrokenPipeError):  # reset: turned away
        pass
    return sock, data.partition(b"\n")[0].decode()


async def echoes(sock: socket.socket) -> bool:
    """Whether a held connection still carries bytes both ways."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"ping")
        async with asyncio.timeout(5):
            return await loop.sock_recv(sock, 100) == b"ping"
    except (ConnectionError, TimeoutError):
        return False


@pytest.fixture
def lb(backends: list[Backend]) -> Iterator[Lb]:
    """pilotfish with two workers: least_conn over b0, b1; a limit of 5; b0 beside a dead
    port (connects to it fail)."""
    running = start_lb("web?balance=least_conn", "web?max_connections=5", "mixed",
                       extra=FLAGS)
    try:
        for backend in backends[:2]:
            running.register("web", backend.name, backend.port)
        running.register("mixed", "alive", backends[0].port)
        running.register("mixed", "dead", free_port())
        for route, count in (("web?balance=least_conn", 2), ("mixed", 2)):
            running.wait_instances(running.routes[route], count)
        workers(running)
        yield running
    finally:
        running.close()


async def test_least_connections_counts_both_workers(lb: Lb) -> None:
    port = lb.routes["web?balance=least_conn"]
    held = [await hold(port) for _ in range(20)]  # one after another: each sees the last
    try:
        assert Counter(name for _, name in held) == {"b0": 10, "b1": 10}
        assert {holder(port, sock) for sock, _ in held} == set(workers(lb))  # both served
        assert lb.metric("pilotfish_lb_connections_active", route=f"{HOST}:{port}") == 20
        for name in ("b0", "b1"):
            assert lb.metric("pilotfish_lb_instance_connections_active", id=name,
                             route=f"{HOST}:{port}") == 10
        deadline = time.monotonic() + 3  # the UI's counters: refreshed every second
        while True:
            report = lb.lb_api.get("/ui/status.json").json()["lb"]
            route = next(r for r in report["routes"] if r["listen"] == f"{HOST}:{port}")
            if route["accepted"] == 20:
                break
            assert time.monotonic() < deadline, route
            await asyncio.sleep(0.1)
        assert route["active"] == 20 and report["active"] == 20
        assert sorted((b["id"], b["active"], b["total"]) for b in route["backends"]) == [
            ("b0", 10, 10), ("b1", 10, 10)]
    finally:
        for sock, _ in held:
            sock.close()


async def test_a_route_limit_counts_both_workers(lb: Lb) -> None:
    port = lb.routes["web?max_connections=5"]
    route = f"{HOST}:{port}"
    for _ in range(6):  # the kernel hashes all five served clients to one worker 1 time in 16
        refused = lb.metric("pilotfish_lb_connections_refused_total", reason="limit",
                            route=route)
        held = [await hold(port) for _ in range(10)]
        try:
            served = [sock for sock, name in held if name]
            assert len(served) == 5, [name for _, name in held]
            assert lb.metric("pilotfish_lb_connections_refused_total", reason="limit",
                             route=route) == refused + 5
            holders = {holder(port, sock) for sock in served}
        finally:
            for sock, _ in held:
                sock.close()
        if len(holders) == 2:
            return
        deadline = time.monotonic() + 5
        while lb.metric("pilotfish_lb_connections_active", route=route) > 0:
            assert time.monotonic() < deadline, lb.metrics_text()
            await asyncio.sleep(0.05)
    raise AssertionError("in six tries the five served clients always reached one worker")


async def test_an_ejection_in_one_worker_is_kept_by_both(lb: Lb) -> None:
    port = lb.routes["mixed"]
    route = f"{HOST}:{port}"
    deadline = time.monotonic() + 10
    while lb.metric("pilotfish_lb_instance_ejections_total", id="dead", route=route) < 1:
        assert await exchange(port, b"x", half_close=True) == "b0"  # retried on b0
        assert time.monotonic() < deadline, lb.metrics_text()
    await asyncio.sleep(0.2)  # shipped: parent, then every worker
    failed = lb.metric("pilotfish_lb_instance_connections_failed_total", id="dead", route=route)
    held = [await hold(port) for _ in range(16)]
    try:
        assert {name for _, name in held} == {"b0"}
        assert len({holder(port, sock) for sock, _ in held}) == 2  # both workers dialled
        assert lb.metric("pilotfish_lb_instance_connections_failed_total", id="dead",
                         route=route) == failed  # neither tried the dead one again
        assert lb.metric("pilotfish_lb_instance_ejections_total", id="dead", route=route) == 1
        assert lb.metric("pilotfish_lb_instance_ejected", id="dead", route=route) == 1
    finally:
        for sock, _ in held:
            sock.close()


async def test_a_route_put_by_the_api_is_served_by_both_within_a_second(lb: Lb) -> None:
    port = free_port()
    response = lb.lb_api.put(f"/v1/routes/{HOST}:{port}", json={"service": "web"})
    assert response.status_code == 201, response.text
    put_at = time.monotonic()
    pids = set(workers(lb))
    seen: set[int] = set()
    held: list[socket.socket] = []
    try:
        while seen != pids:
            assert time.monotonic() - put_at < 1.0, f"served by {seen} of {pids}"
            try:
                sock, name = await hold(port)
            except ConnectionRefusedError:  # a worker has not bound it yet
                continue
            held.append(sock)
            assert name in ("b0", "b1")
            seen.add(holder(port, sock))
        assert lb.lb_api.delete(f"/v1/routes/{HOST}:{port}").status_code == 204
        assert all([await echoes(sock) for sock in held])  # removed: open ones drain
    finally:
        for sock in held:
            sock.close()


async def test_a_killed_worker_is_restarted_and_the_others_connections_carry_on(
        lb: Lb) -> None:
    port = lb.routes["web?balance=least_conn"]
    held = [(await hold(port))[0] for _ in range(16)]
    try:
        owners = [holder(port, sock) for sock in held]
        victim, survivor = workers(lb)
        assert victim in owners and survivor in owners
        os.kill(victim, signal.SIGKILL)
        alive = [await echoes(sock) for sock in held]
        assert alive == [owner == survivor for owner in owners]
        restarted = workers(lb, not_in=frozenset({victim}))
        assert survivor in restarted
        assert lb.metric("pilotfish_worker_restarts_total") == 1
        fresh = [(await hold(port))[0] for _ in range(16)]
        held += fresh
        assert {holder(port, sock) for sock in fresh} == set(restarted)
        survivors = sum(alive)
        assert lb.metric("pilotfish_lb_connections_active",
                         route=f"{HOST}:{port}") == survivors + len(fresh)
    finally:
        for sock in held:
            sock.close()


async def test_sighup_reloads_the_routes_file_into_every_worker(
        backends: list[Backend], tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    routes = tmp_path / "routes"
    routes.write_text(f"{HOST}:{first}=web\n")
    lb = start_lb(extra=(*FLAGS, "--routes-file", str(routes)))
    try:
        lb.register("web", "b0", backends[0].port)
        pids = set(workers(lb))
        routes.write_text(f"{HOST}:{second}=web\n")
        lb.process.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        seen: set[int] = set()
        held: list[socket.socket] = []
        while seen != pids:
            assert time.monotonic() < deadline, f"served by {seen} of {pids}"
            try:
                sock, name = await hold(second)
            except ConnectionRefusedError:
                await asyncio.sleep(0.02)
                continue
            held.append(sock)
            assert name == "b0"
            seen.add(holder(second, sock))
        for sock in held:
            sock.close()
        with pytest.raises(ConnectionRefusedError):  # the route left the file: gone everywhere
            for _ in range(8):
                (await hold(first))[0].close()
    finally:
        lb.close()


async def test_the_transports_engine_balances_over_both_workers(backends: list[Backend]) -> None:
    lb = start_lb("web?balance=least_conn", extra=(*FLAGS, "--lb-engine", "transports"))
    held: list[tuple[socket.socket, str]] = []
    try:
        for backend in backends[:2]:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web?balance=least_conn"]
        lb.wait_instances(port, 2)
        pids = set(workers(lb))
        held = [await hold(port) for _ in range(16)]
        assert Counter(name for _, name in held) == {"b0": 8, "b1": 8}
        assert {holder(port, sock) for sock, _ in held} == pids
    finally:
        for sock, _ in held:
            sock.close()
        lb.close()


async def test_sigterm_drains_every_workers_connections(backends: list[Backend]) -> None:
    lb = start_lb("web", extra=FLAGS)
    held: list[socket.socket] = []
    try:
        lb.register("web", "b0", backends[0].port)
        port = lb.routes["web"]
        lb.wait_instances(port, 1)
        pids = set(workers(lb))
        for _ in range(16):
            sock, name = await hold(port)
            held.append(sock)
            assert name == "b0"
        assert {holder(port, sock) for sock in held} == pids
        lb.process.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no worker accepts any more ...
            await hold(port)
        assert all([await echoes(sock) for sock in held])  # ... while every one drains
        for sock in held:
            sock.close()
        assert lb.process.process.wait(10) == 0
    finally:
        for sock in held:
            sock.close()
        lb.close()
