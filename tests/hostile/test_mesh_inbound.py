"""The mesh's inbound port under hostile clients: garbage, silence, floods, truncation. Each is
turned away (or cut off) without disturbing the clients that are allowed."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pilotfish.mesh.identity import server_name
from pilotfish.mesh.pump import Pump
from tests.mesh.harness import TwoHosts, two_hosts
from tests.mesh.pki import DOMAIN, MeshPki
from tests.mesh.test_tunnels import exchange

TIMEOUT = 5


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[TwoHosts]:
    async with two_hosts(MeshPki.make(tmp_path)) as made:
        yield made


async def _answer(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(-1), TIMEOUT)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_garbage_and_strangers_are_refused_and_the_port_keeps_serving(
    hosts: TwoHosts
) -> None:
    port = hosts.inbound.address.port
    for junk in (b"\x00" * 5000, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"\x16\x03\x01\xff\xff" + b"\x01" * 300):  # a TLS record that lies
        assert b"bytes=" not in await _answer(port, junk)
    for name in (None, "nobody.svc.other.mesh", server_name("unknown", DOMAIN)):
        context = hosts.pki.client_context("web")
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=name or ""), TIMEOUT)
    assert await exchange(hosts.upstream.port, b"still") == b"still\nbytes=5\n"


async def test_silent_connections_are_closed_after_the_handshake_timeout(
    hosts: TwoHosts
) -> None:
    hosts.pump_b.handshake_timeout = 1.0
    quiet = [socket.create_connection(("127.0.0.1", hosts.inbound.address.port))
             for _ in range(20)]
    await asyncio.sleep(2.6)  # the sweep runs every second
    assert hosts.inbound.live == 0
    for sock in quiet:
        sock.close()
    assert await exchange(hosts.upstream.port, b"ok") == b"ok\nbytes=2\n"


async def test_past_the_limit_new_connections_are_reset_and_open_ones_carry_on(
    hosts: TwoHosts
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hosts.upstream.port)
    writer.write(b"held ")
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"held "
    hosts.inbound.max_connections = hosts.inbound.live  # full now
    assert b"bytes=" not in await _answer(hosts.upstream.port, b"turned away")
    assert hosts.inbound.stats.refused.get("limit", 0) >= 1
    writer.write(b"on")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(-1), TIMEOUT) == b"on\nbytes=7\n"
    writer.close()


def _truncate(port: int, context: ssl.SSLContext) -> bytes:
    """Send part of a request over TLS, then a FIN without close_notify: a truncation."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        tls = context.wrap_socket(raw, server_hostname=server_name("db", DOMAIN))
        tls.sendall(b"half a request")
        socket.socket.shutdown(tls, socket.SHUT_WR)  # the TCP FIN alone
        received = b""
        try:
            while chunk := tls.recv(1000):
                received += chunk
        except (ssl.SSLError, OSError):
            pass
        return received


async def test_a_tls_stream_cut_without_close_notify_is_not_passed_on_as_an_end(
    hosts: TwoHosts
) -> None:
    received = await asyncio.to_thread(_truncate, hosts.inbound.address.port,
                                       hosts.pki.client_context("web"))
    assert b"bytes=" not in received
    for _ in range(100):  # the backend's side of the reset arrives a moment later
        if hosts.endings:
            break
        await asyncio.sleep(0.02)
    assert hosts.endings == ["reset"]  # the backend saw its request cut, never a clean end
    assert hosts.pump_b.resets == 1


def test_a_pump_closes_every_tunnel_when_closed() -> None:
    async def scenario() -> None:
        pump = Pump(asyncio.get_running_loop())
        pump.close_all()
        assert not pump.tunnels

    asyncio.run(scenario())
