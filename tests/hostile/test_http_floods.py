"""Floods of anonymous HTTP clients against the registry API: readers never lock out writers,
and running short of file descriptors is answered, counted and logged, never silent.

Figures (connections, 5xx, lapsed leases) are printed with `pytest -s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx

from pilotfish.catalog.backends.http import HttpCatalog
from pilotfish.catalog.model import Instance
from pilotfish.http.limits import HttpLimits
from pilotfish.registrar.registrar import Registrar
from tests.e2e.test_http_limits import Api, metric, running_api
from tests.fixtures.process import PilotfishProcess, start_pilotfish

CAP = 40  # connections per listener in the in-process floods
READERS = 400  # blocking readers in the flood: ten times the cap


async def _long_poll(api: Api, path: str, statuses: Counter[int], stop: asyncio.Event) -> None:
    """One hostile reader: a long-poll on a new connection, again and again until `stop`."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(api.connect(), 2)
        except (OSError, TimeoutError):
            statuses[0] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
            statuses[int(head.split()[1])] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, IndexError, ValueError):
            statuses[0] += 1  # closed without an answer (an idle connection made room)
        finally:
            writer.close()
        await asyncio.sleep(0.01)


@asynccontextmanager
async def reader_flood(api: Api, path: str, count: int = READERS
                       ) -> AsyncIterator[Counter[int]]:
    """`count` readers long-polling `path` for as long as the block runs; their statuses."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_long_poll(api, path, statuses, stop)) for _ in range(count)]
    try:
        yield statuses
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def header(response: bytes, name: str) -> str:
    """A header's value in a raw response."""
    for line in response.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.encode():
            return value.strip().decode()
    raise AssertionError(f"no {name} in {response[:300]!r}")


async def test_a_flood_of_long_polls_never_lapses_a_lease() -> None:
    """Issue 21, item 2, scaled: a TTL-2 registrar and raw TTL-2 keepalives, then readers at
    ten times the cap; the registration stays the whole time and no keepalive sees a 503."""
    async with running_api(HttpLimits(max_connections=CAP)) as api:
        catalog = api.api.catalog
        listener = api.server.listener
        base = f"http://{api.server.address.host}:{api.server.address.port}"
        remote = HttpCatalog(base)
        registrar = Registrar(remote, ttl=2, owner="writer", instances=[Instance(
            service="web", id="w1", address="127.0.0.1", port=8080, lease="pending")])
        keepalives: Counter[int | str] = Counter()
        missing = 0
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            lease = (await client.post("/v1/leases", json={"ttl": 2})).json()["id"]
            await registrar.start()
            index = (await catalog.snapshot()).index
            async with reader_flood(api, f"/v1/catalog?index={index}&wait=60s") as readers:
                deadline = time.monotonic() + 6
                next_keepalive = 0.0
                while time.monotonic() < deadline:
                    if time.monotonic() >= next_keepalive:
                        try:
                            response = await client.put(f"/v1/leases/{lease}/keepalive")
                            keepalives[response.status_code] += 1
                        except httpx.HTTPError as exc:
                            keepalives[type(exc).__name__] += 1
                        next_keepalive = time.monotonic() + 0.6
                    if (await catalog.snapshot()).get("w1") is None:
                        missing += 1
                    await asyncio.sleep(0.05)
                waiting = len(getattr(listener, "waiting", listener.connections))
                lapsed = catalog.expirations
            await client.delete(f"/v1/leases/{lease}")
            await registrar.stop()
        await remote.close()
        shed = getattr(listener, "shed", 0)
    print(f"\nflood: {READERS} readers against a cap of {CAP}: statuses {dict(readers)}, "
          f"{waiting} waiting at the end, shed {shed}; keepalives {dict(keepalives)}, "
          f"registrar errors {registrar.errors}, leases lapsed {lapsed}")
    assert missing == 0, f"w1 was missing from {missing} reads"
    assert lapsed == 0
    assert set(keepalives) == {200}, keepalives
    assert registrar.reregistrations == 0 and registrar.errors == 0
    assert sum(readers.values()) > 2 * READERS  # the flood did run
    assert waiting <= CAP // 2
    assert readers[200] > 0  # readers were served too (shed ones got the current answer)


async def test_consul_blocking_queries_are_readers_and_leave_room_for_writers() -> None:
    async with running_api(HttpLimits(max_connections=20)) as api:
        _, answer = await api.get("/v1/catalog/service/web")
        index = int(header(answer, "x-consul-index"))
        polls = []
        for _ in range(20):
            reader, writer = await api.connect()
            writer.write(f"GET /v1/catalog/service/web?index={index}&wait=30s HTTP/1.1\r\n"
                         "host: x\r\n\r\n".encode())
            polls.append((reader, writer))
        answered = await asyncio.gather(*(_answer_within(reader, 2.0) for reader, _ in polls))
        refused = [said for said in answered if said is not None]
        assert len(refused) == 10, f"{len(refused)} of 20 polls answered at once"
        assert all(said.startswith(b"HTTP/1.1 503 ") for said in refused), refused
        assert all(b"retry-after: 1" in said.lower() for said in refused)
        # A writer still gets in, on a new connection, while ten readers wait.
        status, body = await api.request(
            b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
            b"connection: close\r\n\r\n{\"ttl\": 5}")
        assert status == 201, body
        assert len(api.server.listener.waiting) == 10
        for _, writer in polls:
            writer.close()


async def _answer_within(reader: asyncio.StreamReader, seconds: float) -> bytes | None:
    """The whole answer if the server answers and closes within `seconds`, else None."""
    try:
        return await asyncio.wait_for(reader.read(-1), seconds)
    except TimeoutError:
        return None


# Running short of file descriptors (issue 21, item 3) -------------------------------------

SILENT = 400  # connections that never send a byte, to a process limited to 256 files


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files limit")


def _limited_to(soft: int, hard: int) -> tuple[str, ...]:
    return ("prlimit", f"--nofile={soft}:{hard}", "--")


def _ask(host: str, port: int, path: str = "/v1/services", timeout: float = 3.0) -> bytes:
    """One request on a new connection; what came back before the server closed."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@contextlib.contextmanager
def silent_connections(host: str, port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send nothing, closed when the block ends."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, port))
            sockets.append(sock)
        time.sleep(0.5)  # the server accepts them
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _address(process: PilotfishProcess) -> tuple[str, int]:
    host, port = process.listening["registry API"].rsplit(":", 1)
    return host, int(port)


def test_every_server_raises_its_open_files_limit_to_the_hard_one() -> None:
    commands = {"registry": ("--api", "127.0.0.1:0"), "dns": ("--dns", "127.0.0.1:0")}
    for command, flags in commands.items():
        process = subprocess.Popen(
            [*_limited_to(256, 4096), sys.executable, "-m", "pilotfish", command,
             "--registry", "memory://", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while _soft_nofile(process.pid) != 4096:
                assert process.poll() is None, f"{command} exited"
                assert time.monotonic() < deadline, f"{command} kept the soft limit " \
                    f"{_soft_nofile(process.pid)}"
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)


def test_silent_connections_beyond_the_open_files_limit_leave_new_clients_an_answer() -> None:
    """A registry whose hard limit is 256 files (it cannot raise itself out of it), flooded
    with 400 silent connections: every new client still gets an HTTP answer at once."""
    with start_pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0",
                         prefix=_limited_to(256, 256)) as registry:
        host, port = _address(registry)
        pid = registry.process.pid
        before = _open_files(pid)
        answers: Counter[str] = Counter()
        slowest = 0.0
        with silent_connections(host, port, SILENT):
            during = _open_files(pid)
            for _ in range(20):
                started = time.monotonic()
                said = _ask(host, port)
                slowest = max(slowest, time.monotonic() - started)
                answers[said[:12].decode(errors="replace") or "empty reply"] += 1
        scraped = _ask(host, port, "/metrics")
        evicted = metric(scraped, 'pilotfish_http_evicted_total{listener="registry API"}')
        print(f"\n{SILENT} silent connections, limit 256: fds {before} -> {during}, "
              f"answers {dict(answers)}, slowest {slowest:.2f}s, evicted {evicted:g}")
        assert set(answers) <= {"HTTP/1.1 200", "HTTP/1.1 503"}, answers
        assert slowest < 2.0
        assert during < 256
        assert evicted > 0


FD_STARVED = """
import asyncio, resource, sys
from pilotfish.config import HostPort
from pilotfish.http.server import HttpServer
from pilotfish.http.status import StatusApp
from pilotfish.http.limits import HttpLimits
from pilotfish.metrics import Metrics
import logging
logging.basicConfig(level="INFO", stream=sys.stderr, format="%(levelname)s %(message)s")

async def main():
    metrics = Metrics()
    app = StatusApp(metrics, lambda: (True, {}))
    server = HttpServer(app, HostPort("127.0.0.1", 0), what="starved",
                        limits=HttpLimits(max_connections=1000), metrics=metrics)
    await server.start()
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_running_out_of_files_is_answered_503_counted_and_logged_once() -> None:
    """Something else took the descriptors (a cap set too high for the limit): accept fails
    with EMFILE. New clients get a prompt 503, the refusals are counted and logged, briefly."""
    process = subprocess.Popen([sys.executable, "-c", FD_STARVED], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://" in line, line
        host, port = line.rsplit("://", 1)[1].split()[0].rsplit(":", 1)
        answers: Counter[str] = Counter()
        with silent_connections(host, int(port), 200):
            for _ in range(20):
                said = _ask(host, int(port), "/metrics")
                answers[said[:12].decode(errors="replace") or "empty reply"] += 1
        scraped = b""
        deadline = time.monotonic() + 5
        while not scraped.startswith(b"HTTP/1.1 200") and time.monotonic() < deadline:
            time.sleep(0.1)  # until the server has seen the flood go
            scraped = _ask(host, int(port), "/metrics")
        refused = metric(scraped, 'pilotfish_http_refused_total{listener="starved",'
                                  'status="503"}')
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
    logged = [entry for entry in output.splitlines() if "out of file descriptors" in entry]
    print(f"\nEMFILE: answers {dict(answers)}, refused {refused:g}, log lines {len(logged)}")
    assert answers == {"HTTP/1.1 503": 20}, answers
    assert refused >= 20
    assert len(logged) in (1, 2), output[-2000:]  # once per 10 s: the flood spans one or two
