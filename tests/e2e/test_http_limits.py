"""Hostile and careless HTTP clients on real sockets: none takes the registry API from the rest.

The API runs in the test's own event loop (HttpServer + RegistryApi on memory://), so the
tests can count its tasks and use small limits; the clients are plain asyncio sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.model import Instance
from pilotfish.config import HostPort
from pilotfish.http.limits import HttpLimits
from pilotfish.http.server import HttpServer
from pilotfish.http.tls import TlsSettings
from pilotfish.registry.app import RegistryApi

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
SMALL = HttpLimits(max_header=8 * 1024, request_timeout=0.5, max_connections=20)


class Api:
    """A running in-process API and a way to open raw connections to it."""

    def __init__(self, server: HttpServer, api: RegistryApi) -> None:
        self.server, self.api = server, api

    async def connect(self) -> Streams:
        address = self.server.address
        return await asyncio.open_connection(address.host, address.port)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one raw request on a new connection; (status, whole response)."""
        reader, writer = await self.connect()
        try:
            writer.write(raw)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    async def get(self, path: str) -> tuple[int, bytes]:
        return await self.request(f"GET {path} HTTP/1.1\r\nhost: x\r\n"
                                  "connection: close\r\n\r\n".encode())


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """Read until the server closes; the status of the response."""
    data = await asyncio.wait_for(reader.read(-1), timeout)
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server said before closing, failing if it keeps the connection past `within`."""
    return await asyncio.wait_for(reader.read(-1), within)


@asynccontextmanager
async def running_api(limits: HttpLimits = SMALL, max_body: int = 64 * 1024,
                      tls: TlsSettings | None = None) -> AsyncIterator[Api]:
    catalog = MemoryCatalog()
    api = RegistryApi(catalog, max_body=max_body)
    server = HttpServer(api.app, HostPort("127.0.0.1", 0), before_stop=api.stop_waiting,
                        limits=limits, metrics=api.metrics, tls=tls)
    await server.start()
    try:
        yield Api(server, api)
    finally:
        await server.stop()
        await catalog.close()


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


REFUSED = 'pilotfish_http_refused_total{{listener="registry API",status="{status}"}}'


def metric(text: bytes, line_start: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


async def test_a_huge_head_is_refused_with_431_before_it_is_read() -> None:
    async with running_api() as api:
        reader, writer = await api.connect()
        writer.write(b"GET /v1/services HTTP/1.1\r\nhost: x\r\nx-big: ")
        said = asyncio.create_task(closed_by_server(reader, 5))
        sent = 0
        while not said.done():  # up to 64 MiB, but the server must stop us long before
            writer.write(b"a" * 65536)
            sent += 65536
            assert sent <= 64 * 1024 * 1024, "the server kept reading"
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        refused = await said
        writer.close()
        assert refused.startswith(b"HTTP/1.1 431 "), refused[:100]
        assert (await api.get("/v1/services"))[0] == 200
        _, scraped = await api.get("/metrics")
        assert metric(scraped, REFUSED.format(status=431)) == 1


@pytest.mark.parametrize("size", [17_000, 60_000, 70_000, 130_000])
async def test_a_head_over_the_limit_is_refused_however_it_arrives(size: int) -> None:
    """Issue 21, item 10: a head arriving in one read was parsed whole before the check."""
    async with running_api(HttpLimits(request_timeout=5)) as api:
        filler = "x" * (size - 100)
        head = (f"GET /v1/services HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                f"x-big: {filler}\r\n\r\n").encode()
        status, said = await api.request(head)
        assert status == 431, said[:200]
        many = "".join(f"x-h{n}: {'y' * 90}\r\n" for n in range(size // 100))
        status, said = await api.request(f"GET /v1/services HTTP/1.1\r\nhost: x\r\n{many}"
                                         "connection: close\r\n\r\n".encode())
        assert status == 431, said[:200]
        just_under = "x" * (16 * 1024 - 200)
        status, said = await api.request(f"GET /v1/services HTTP/1.1\r\nhost: x\r\nx-big: "
                                         f"{just_under}\r\nconnection: close\r\n\r\n".encode())
        assert status == 200, said[:200]


async def test_a_request_that_never_completes_is_cut_off_on_time() -> None:
    async with running_api() as api:
        silent_reader, silent = await api.connect()
        trickle_reader, trickle = await api.connect()
        started = time.monotonic()
        answer = asyncio.create_task(closed_by_server(trickle_reader, 3))
        for byte in b"GET /v1/services HTTP/1.1\r\nhost: x\r\n" * 10:  # a byte every 50 ms
            if answer.done():
                break
            trickle.write(bytes([byte]))
            await asyncio.sleep(0.05)
        said = await answer
        assert said.startswith(b"HTTP/1.1 408 "), said
        assert time.monotonic() - started < SMALL.request_timeout + 1.0
        assert (await closed_by_server(silent_reader, 1)).startswith(b"HTTP/1.1 408 ")
        silent.close()
        trickle.close()
        # A slow body is cut off too (the handler sees its client gone).
        reader, writer = await api.connect()
        writer.write(b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{")
        await closed_by_server(reader, SMALL.request_timeout + 1.5)
        writer.close()
        assert (await api.get("/v1/services"))[0] == 200
        _, scraped = await api.get("/metrics")
        assert metric(scraped, REFUSED.format(status=408)) == 2
        assert metric(scraped, 'pilotfish_http_cut_total{listener="registry API"}') == 1


async def test_new_clients_displace_idle_ones_and_busy_ones_are_not_dropped() -> None:
    async with running_api() as api:
        idle = [await api.connect() for _ in range(SMALL.max_connections)]
        status, _ = await api.get("/v1/services")  # the cap is reached: the oldest idle goes
        assert status == 200
        assert idle[0][0].at_eof() or await closed_by_server(idle[0][0], 1) == b""
        assert api.server.listener.evicted == 1
        evicted = 'pilotfish_http_evicted_total{listener="registry API"}'
        assert metric((await api.get("/metrics"))[1], evicted) >= 1  # this scrape may evict too
        for _, writer in idle:
            writer.close()
        await wait_for(lambda: not api.server.listener.connections, 2, "connections not gone")


async def read_one(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response on a kept-alive connection: (status, head and body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    return int(head.split(b" ", 2)[1]), head + await reader.readexactly(length)


async def test_long_polls_hold_half_the_slots_and_writers_keep_theirs() -> None:
    async with running_api(HttpLimits(request_timeout=5, max_connections=20)) as api:
        listener = api.server.listener
        index = (await api.api.catalog.snapshot()).index
        polls = []
        for _ in range(12):
            reader, writer = await api.connect()
            writer.write(f"GET /v1/catalog?index={index}&wait=30s HTTP/1.1\r\n"
                         "host: x\r\n\r\n".encode())
            polls.append((reader, writer))
        await wait_for(lambda: len(listener.waiting) == 10, 5, "polls did not start")
        for reader, _ in polls[10:]:  # beyond half the cap: 503, ask again in a second
            status, said = await read_response(reader)
            assert status == 503 and b"retry-after: 1" in said.lower(), said
        # Ten kept-alive connections that wrote (a lease each); 10 polls + 10 writers: full.
        writers = []
        for _ in range(10):
            reader, writer = await api.connect()
            writer.write(b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n"
                         b'{"ttl": 30}')
            status, said = await read_one(reader)
            assert status == 201, said
            writers.append((reader, writer, json.loads(said.split(b"\r\n\r\n")[1])["id"]))
        assert listener.writers == 10 and len(listener.connections) == 20
        # A newcomer gets in: the oldest poll answers now (its current answer) and closes.
        assert (await api.get("/v1/services"))[0] == 200
        status, said = await read_response(polls[0][0])
        assert status == 200 and b"connection: close" in said.lower(), said
        assert listener.shed == 1 and listener.evicted == 0
        for _, writer in polls:
            writer.close()
        await wait_for(lambda: not listener.waiting, 5, "polls not gone")
        # Writers and requests still being received fill every slot: a newcomer is refused,
        # and the writers' idle connections are not taken from them.
        trickling = []
        for _ in range(10):
            reader, writer = await api.connect()
            writer.write(b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{")
            trickling.append((reader, writer))
        await wait_for(lambda: len(listener.connections) == 20 and sum(
            not c.idle for c in listener.connections) == 10, 5, "bodies did not start")
        status, said = await api.get("/v1/services")
        assert status == 503, said
        for reader, writer, lease in writers:
            writer.write(f"PUT /v1/leases/{lease}/keepalive HTTP/1.1\r\nhost: x\r\n"
                         "\r\n".encode())
            assert (await read_one(reader))[0] == 200
        for _, writer in trickling:
            writer.write(b'"ttl": 30}')
        for reader, _ in trickling:
            assert (await read_one(reader))[0] == 201
        assert listener.evicted == 0


async def test_a_body_over_the_limit_is_refused_without_reading_it() -> None:
    async with running_api(max_body=4096) as api:
        declared = (b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: 524288000\r\n\r\n")
        status, body = await api.request(declared)
        assert status == 413 and b'"field":"body"' in body
        reader, writer = await api.connect()
        writer.write(b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        said_task = asyncio.create_task(closed_by_server(reader, 5))
        sent = 0
        while not said_task.done():
            writer.write(b"400\r\n" + b" " * 1024 + b"\r\n")
            sent += 1024
            assert sent < 16 * 1024 * 1024, "the server kept reading"
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0)
        said = await said_task
        writer.close()
        assert said.startswith(b"HTTP/1.1 413 "), said[:100]
        status, body = await api.request(
            b"POST /v1/leases HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"
            b"connection: close\r\n\r\n{\"ttl\": 5}")
        assert status == 201, body


async def test_a_client_gone_mid_body_is_counted_as_gone_not_as_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    async with running_api() as api:
        for _ in range(5):
            reader, writer = await api.connect()
            writer.write(b"PUT /v1/services/web/instances/w1 HTTP/1.1\r\nhost: x\r\n"
                         b"content-length: 1000\r\n\r\n{\"address\": ")
            await writer.drain()
            await asyncio.sleep(0.05)  # the handler is reading the body now
            writer.close()
        _, text = await api.get("/metrics")
        await wait_for(lambda: "499" in api.api.metrics.render(), 2, "no 499 counted")
        _, text = await api.get("/metrics")
        assert metric(text, 'pilotfish_http_requests_total{status="499"}') == 5
        assert metric(text, 'pilotfish_http_requests_total{status="500"}') == 0
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]


async def test_abandoned_long_polls_end_when_their_clients_leave() -> None:
    async with running_api(HttpLimits(max_connections=4096)) as api:
        catalog = api.api.catalog
        lease = await catalog.create_lease(60)
        index = (await catalog.snapshot()).index
        listener = api.server.listener
        baseline = len(asyncio.all_tasks())
        batch, total, most = 250, 10_000, 0
        paths = [f"/v1/services/web?index={index}&wait=10m", f"/v1/catalog?index={index}&wait=10m"]
        started = time.monotonic()
        for n in range(total // batch):
            path = paths[n % 2]
            clients = await asyncio.gather(*(api.connect() for _ in range(batch)))
            for _, writer in clients:
                writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            await wait_for(lambda: sum(not c.idle for c in listener.connections) == batch, 10,
                           "the polls did not all start")
            most = max(most, len(asyncio.all_tasks()) - baseline)
            for _, writer in clients:
                writer.close()
            await wait_for(lambda: len(asyncio.all_tasks()) <= baseline + 5, 5,
                           f"abandoned polls still running after batch {n}")
            if n == 0:
                rss_after_first = rss()
        elapsed = time.monotonic() - started
        grown = rss() - rss_after_first
        assert grown < 64 * 1024 * 1024, f"RSS grew by {grown >> 20} MiB"
        assert most <= 6 * batch, most  # a poll: its request, watch, wake-up and disconnect tasks
        assert not api.server.listener.connections
        # Polls that stay still answer a change.
        reader, writer = await api.connect()
        writer.write(f"GET /v1/services/web?index={index}&wait=10s HTTP/1.1\r\nhost: x\r\n"
                     "connection: close\r\n\r\n".encode())
        await asyncio.sleep(0.05)
        await catalog.register(Instance(service="web", id="w1", address="127.0.0.1", port=80,
                                        lease=lease.id))
        status, body = await read_response(reader)
        writer.close()
        assert status == 200 and b'"w1"' in body
        print(f"\n{total} abandoned long-polls in {elapsed:.1f}s, at most {most} tasks at once, "
              f"RSS {grown / 2**20:+.1f} MiB after the first batch")
