"""Fixtures for LB tests: echo backend processes and a pilotfish process balancing over them."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.fixtures.servers import HOST, free_port, terminate

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("epoll", "transports")  # --lb-engine: tests that depend on how bytes move run on both


@dataclass
class Backend:
    """An echo backend process (tests/lb/echo.py) on a loopback port."""

    name: str
    port: int
    process: subprocess.Popen[str] | None = None

    def start(self) -> Backend:
        """Start (or restart) the process and wait until it listens."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lb.echo", self.name, HOST, str(self.port)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        return self

    def kill(self) -> None:
        """SIGKILL: the process dies without closing anything."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Stop the process if it runs."""
        if self.process is not None:
            terminate(self.process)


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """Three echo backends, b0..b2, stopped after the test."""
    started = [Backend(f"b{i}", free_port()).start() for i in range(3)]
    try:
        yield started
    finally:
        for backend in started:
            backend.stop()


@dataclass
class Lb:
    """A `pilotfish up` process with one or more routes, its API client and LB API client."""

    process: PilotfishProcess
    api: httpx.Client
    lb_api: httpx.Client
    routes: dict[str, int] = field(default_factory=dict)

    def register(self, service: str, instance_id: str, port: int, **fields: Any) -> None:
        """PUT an instance on 127.0.0.1 with a lease of its own."""
        response = self.api.put(f"/v1/services/{service}/instances/{instance_id}",
                                json={"address": HOST, "port": port, "ttl": 3600, **fields})
        assert response.status_code in (200, 201), response.text

    def deregister(self, service: str, instance_id: str) -> None:
        """DELETE an instance."""
        response = self.api.delete(f"/v1/services/{service}/instances/{instance_id}")
        assert response.status_code == 204, response.text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the series of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.lb_api.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and line.split(" ")[0] != name:
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def metrics_text(self) -> str:
        """The LB's counters (not bytes), to show when an assertion fails."""
        return "\n".join(line for line in self.lb_api.get("/metrics").text.splitlines()
                         if line.startswith("pilotfish_lb") and "bytes" not in line)

    def wait_instances(self, route_port: int, count: int, timeout: float = 5.0) -> None:
        """Wait until the route's pool serves `count` instances (per the metrics)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.lb_api.get("/metrics").text.splitlines()
                     if line.startswith("pilotfish_lb_instance_draining{")
                     and f':{route_port}"' in line and float(line.rpartition(" ")[2]) == 0]
            if len(lines) == count:
                return
            assert time.monotonic() < deadline, f"route never had {count} instances: {lines}"
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the process and the clients."""
        self.api.close()
        self.lb_api.close()
        self.process.stop()


def start_lb(*routes: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Lb:
    """`pilotfish up` (API, no DNS) with these --route values ('{port}' is filled in)."""
    ports: dict[str, int] = {}
    args: list[str] = []
    for route in routes:
        port = free_port()
        ports[route] = port
        args += ["--route", f"{HOST}:{port}={route}"]
    process = start_pilotfish("up", "--api", f"{HOST}:0", "--dns", "off", "--lb-api",
                              f"{HOST}:0", *args, *extra, env=env,
                              expect=("registry API", "lb API"))
    return Lb(process, httpx.Client(base_url=process.api, timeout=10),
              httpx.Client(base_url="http://" + process.listening["lb API"], timeout=10), ports)


def open_fds(pid: int) -> int:
    """How many file descriptors the process holds."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


class RawBackend:
    """A listening socket in the test's own loop, for backends that must misbehave on cue."""

    def __init__(self, backlog: int = 16) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    async def accept(self, timeout: float = 5.0) -> socket.socket:
        """The next connection, non-blocking."""
        async with asyncio.timeout(timeout):
            conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
        conn.setblocking(False)
        return conn

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


async def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read until EOF."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 1 << 16):
            data += chunk
    return bytes(data)


async def read_exactly(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    """Read exactly `size` bytes (fewer only at EOF)."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    async with asyncio.timeout(timeout):
        while len(data) < size:
            chunk = await loop.sock_recv(sock, size - len(data))
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def connect(port: int, host: str = HOST, source: str | None = None) -> socket.socket:
    """A non-blocking client socket connected to host:port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setblocking(False)
    if source is not None:
        sock.bind((source, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock
