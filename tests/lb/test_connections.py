"""Half-close, backpressure, PROXY headers, limits, timeouts and IPv6 through a real pilotfish
process, on both engines (epoll, the default on Linux, and asyncio transports)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.servers import HOST
from tests.lb.conftest import (
    ENGINES,
    Backend,
    Lb,
    RawBackend,
    connect,
    read_all,
    read_exactly,
    start_lb,
)
from tests.lb.load import exchange

MIB = 1 << 20
ROUTES = ("web", "web?max_connections=2", "raw?proxy_protocol=v1", "raw2?proxy_protocol=v2",
          "hole")
SETTINGS = ("--lb-idle-timeout", "1.5", "--lb-connect-timeout", "0.5", "--lb-max-connections",
            "6", "--lb-retries", "1", "--lb-check-interval", "0")


@pytest.fixture(scope="module")
def echo() -> Iterator[Backend]:
    from tests.fixtures.servers import free_port

    backend = Backend("e0", free_port()).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module", params=ENGINES)
def lb(echo: Backend, request: pytest.FixtureRequest) -> Iterator[Lb]:
    running = start_lb(*ROUTES, extra=(*SETTINGS, "--lb-engine", request.param))
    try:
        running.register("web", "e0", echo.port)
        for route in ROUTES[:2]:
            running.wait_instances(running.routes[route], 1)
        yield running
    finally:
        running.close()
    assert not running.process.crashes(), running.process.crashes()


async def _client_half_close(port: int, host: str = HOST) -> None:
    payload = bytes(range(256)) * (MIB // 256)
    sock = await connect(port, host)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, payload)
        sock.shutdown(socket.SHUT_WR)  # done sending; the whole reply must still arrive
        reply = await read_all(sock)
    finally:
        sock.close()
    assert reply == b"e0\n" + payload


async def _backend_half_close(lb: Lb, service: str, route: str) -> None:
    loop = asyncio.get_running_loop()
    raw = RawBackend()
    lb.register(service, "half", raw.port)
    lb.wait_instances(lb.routes[route], 1)
    payload = bytes(reversed(range(256))) * (MIB // 256)
    client = await connect(lb.routes[route])
    try:
        server = await raw.accept()
        await loop.sock_sendall(server, payload)
        server.shutdown(socket.SHUT_WR)  # the backend is done first
        assert await read_all(client) == payload
        await loop.sock_sendall(client, b"the client still talks")  # and is still heard
        client.shutdown(socket.SHUT_WR)
        assert await read_all(server) == b"the client still talks"
        server.close()
    finally:
        client.close()
        raw.close()
        lb.deregister(service, "half")


async def test_half_close_from_the_client_one_mib(lb: Lb) -> None:
    route = f"{HOST}:{lb.routes['web']}"
    before_in = lb.metric("pilotfish_lb_instance_bytes_in_total", route=route)
    before_out = lb.metric("pilotfish_lb_instance_bytes_out_total", route=route)
    await _client_half_close(lb.routes["web"])
    await asyncio.sleep(0.1)
    assert lb.metric("pilotfish_lb_instance_bytes_in_total", route=route) - before_in == MIB
    assert lb.metric("pilotfish_lb_instance_bytes_out_total", route=route) - before_out == \
        MIB + 3  # the echo and the greeting "e0\n"


async def test_half_close_from_the_backend_one_mib(lb: Lb) -> None:
    await _backend_half_close(lb, "hole", "hole")


@pytest.mark.parametrize("engine", ENGINES)
async def test_half_close_both_ways_on_the_stdlib_loop(echo: Backend, engine: str) -> None:
    running = start_lb("web", "hole", extra=("--no-uvloop", "--lb-engine", engine))
    try:
        running.register("web", "e0", echo.port)
        running.wait_instances(running.routes["web"], 1)
        await _client_half_close(running.routes["web"])
        await _backend_half_close(running, "hole", "hole")
        assert "uvloop" not in "".join(running.process.lines)
    finally:
        running.close()
    assert not running.process.crashes()


async def test_backpressure_bounds_what_the_balancer_holds(lb: Lb) -> None:
    raw = RawBackend()
    lb.register("hole", "slow", raw.port)
    lb.wait_instances(lb.routes["hole"], 1)
    client = await connect(lb.routes["hole"])
    try:
        server = await raw.accept()  # and reads nothing for now
        chunk, sent, stalled = bytes(range(256)) * 256, 0, 0.0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                sent += client.send(chunk)
                stalled = 0.0
            except BlockingIOError:
                stalled = stalled or time.monotonic()
                if time.monotonic() - stalled > 0.5:
                    break
                await asyncio.sleep(0.02)
        # Socket buffers on the way hold a few MiB each, the balancer at most ~1 MiB more;
        # one that kept reading would have taken everything sent in 15 s.
        assert stalled, f"the client was never held back ({sent} bytes sent)"
        assert sent < 48 * MIB, sent
        received = await read_exactly(server, sent, timeout=20)  # then all of it arrives
        assert len(received) == sent and received[:len(chunk)] == chunk
        server.close()
    finally:
        client.close()
        raw.close()
        lb.deregister("hole", "slow")


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_proxy_protocol_header_reaches_the_backend(lb: Lb, version: str) -> None:
    service = "raw" if version == "v1" else "raw2"
    route = ROUTES[2] if version == "v1" else ROUTES[3]
    port = lb.routes[route]
    raw = RawBackend()
    lb.register(service, "pp", raw.port)
    lb.wait_instances(port, 1)
    client = await connect(port, source="127.0.0.5")
    client_port = client.getsockname()[1]
    try:
        await asyncio.get_running_loop().sock_sendall(client, b"hello")
        server = await raw.accept()
        if version == "v1":
            expected = f"PROXY TCP4 127.0.0.5 127.0.0.1 {client_port} {port}\r\n".encode()
        else:
            expected = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + socket.inet_aton("127.0.0.5")
                        + socket.inet_aton("127.0.0.1") + struct.pack("!HH", client_port, port))
        assert await read_exactly(server, len(expected) + 5) == expected + b"hello"
        server.close()
    finally:
        client.close()
        raw.close()
        lb.deregister(service, "pp")


async def _refused(port: int) -> bool:
    """Whether the LB turns a new client away (a reset before any byte)."""
    try:
        await exchange(port, b"x", half_close=True, timeout=3)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError as exc:  # ENOTCONN: reset before our shutdown
        return exc.errno == 107
    return False


async def test_route_and_global_connection_limits(lb: Lb) -> None:
    limited, web = lb.routes["web?max_connections=2"], lb.routes["web"]
    held = [await connect(limited) for _ in range(2)]
    try:
        for sock in held:
            assert await read_exactly(sock, 3) == b"e0\n"
        refused_before = lb.metric("pilotfish_lb_connections_refused_total", reason="limit")
        assert await _refused(limited)  # over the route's limit
        assert not await _refused(web)  # other routes are not affected
        held += [await connect(web) for _ in range(4)]  # 6 in all: the global limit
        for sock in held[2:]:
            assert await read_exactly(sock, 3) == b"e0\n"
        assert await _refused(web)
        for sock in held:  # the existing ones are untouched
            await asyncio.get_running_loop().sock_sendall(sock, b"ping")
            assert await read_exactly(sock, 4) == b"ping"
        assert lb.metric("pilotfish_lb_connections_refused_total", reason="limit") == \
            refused_before + 2
    finally:
        for sock in held:
            sock.close()
    await asyncio.sleep(0.2)
    assert not await _refused(limited)


async def test_idle_timeout_closes_only_silent_connections(lb: Lb) -> None:
    loop = asyncio.get_running_loop()
    silent = await connect(lb.routes["web"])
    busy = await connect(lb.routes["web"])
    try:
        started = time.monotonic()
        assert await read_exactly(silent, 3) == b"e0\n"
        assert await read_exactly(busy, 3) == b"e0\n"
        while time.monotonic() - started < 3:
            await loop.sock_sendall(busy, b"tick")
            assert await read_exactly(busy, 4) == b"tick"
            await asyncio.sleep(0.2)
        assert await read_all(silent, timeout=2) == b""  # closed by the idle timeout
    finally:
        silent.close()
        busy.close()


async def test_connect_timeout_then_the_client_is_refused(lb: Lb) -> None:
    hole = socket.socket()
    hole.bind((HOST, 0))
    hole.listen(0)
    fillers = []
    try:
        for _ in range(2):  # fill the accept queue: further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(hole.getsockname())
            fillers.append(filler)
        await asyncio.sleep(0.1)
        lb.register("hole", "hole", hole.getsockname()[1])
        lb.wait_instances(lb.routes["hole"], 1)
        started = time.monotonic()
        assert await _refused(lb.routes["hole"])
        elapsed = time.monotonic() - started
        assert 0.45 <= elapsed < 4.0, elapsed  # one attempt: no other instance to retry on
        assert lb.metric("pilotfish_lb_instance_connections_failed_total", id="hole") == 1
        assert lb.metric("pilotfish_lb_connections_refused_total", reason="connect_failed",
                         route=f"{HOST}:{lb.routes['hole']}") == 1
    finally:
        lb.deregister("hole", "hole")
        for filler in fillers:
            filler.close()
        hole.close()


def _free_v6_port() -> int:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port: int = sock.getsockname()[1]
        return port


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("engine", ENGINES)
async def test_ipv6_listener(echo: Backend, engine: str) -> None:
    from tests.fixtures.process import start_pilotfish

    process = start_pilotfish("up", "--api", f"{HOST}:0", "--dns", "off", "--lb-api", "off",
                              "--lb-engine", engine, "--route", f"[::1]:{_free_v6_port()}=web",
                              expect=("registry API", "lb route to web"))
    try:
        import httpx

        async with httpx.AsyncClient() as client:
            response = await client.put(f"{process.api}/v1/services/web/instances/e0",
                                        json={"address": HOST, "port": echo.port, "ttl": 60})
            response.raise_for_status()
        port = int(process.listening["lb route to web"].rpartition(":")[2])
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await exchange(port, b"over ipv6", True, host="::1") == "e0"
                break
            except ConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    finally:
        process.stop()
