"""The mesh's proxies on loopback: an app on host A reaches a service on host B through A's
outbound route and B's inbound port, over mutual TLS 1.3, as the intentions allow."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pilotfish.mesh.identity import server_name
from pilotfish.mesh.intentions import Intention
from tests.mesh.harness import TwoHosts, free_port, two_hosts
from tests.mesh.pki import DOMAIN, MeshPki

TIMEOUT = 5


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[TwoHosts]:
    async with two_hosts(MeshPki.make(tmp_path)) as made:
        yield made


async def exchange(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send payload, half-close, read everything back."""
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()

    sending = asyncio.create_task(send())
    try:
        received = await asyncio.wait_for(reader.read(-1), TIMEOUT)
        await sending
        return received
    finally:
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        writer.close()


async def test_an_allowed_app_reaches_the_service_with_half_close_both_ways(
    hosts: TwoHosts
) -> None:
    payload = os.urandom(3 << 20)  # several TLS records and partial writes each way
    received = await exchange(hosts.upstream.port, payload)
    assert received == payload + f"\nbytes={len(payload)}\n".encode()
    assert hosts.inbound.stats.carried == 1
    small = await exchange(hosts.upstream.port, b"ping")  # resumes the TLS session
    assert small == b"ping\nbytes=4\n"


async def test_the_second_connection_resumes_the_tls_session(hosts: TwoHosts) -> None:
    await exchange(hosts.upstream.port, b"one")
    assert len(hosts.outbound.sessions) == 1
    listener = hosts.outbound.gates[0].listener
    assert listener is not None and listener.resumed == 0  # type: ignore[attr-defined]
    assert await exchange(hosts.upstream.port, b"two") == b"two\nbytes=3\n"
    assert listener.resumed == 1  # type: ignore[attr-defined]
    assert hosts.inbound.stats.carried == 2  # the resumed session still names its client


async def test_a_denied_source_is_refused_and_an_allow_applies_to_the_next_connection(
    hosts: TwoHosts
) -> None:
    hosts.allow(Intention("web", "db", "deny"), default="allow")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError, AssertionError)):
        answer = await exchange(hosts.upstream.port, b"hello")
        assert answer == b"", answer  # refused: nothing of the service came back
        raise ConnectionResetError
    assert hosts.inbound.stats.refused == {"denied": 1}
    hosts.allow(Intention("web", "db", "allow"))
    assert await exchange(hosts.upstream.port, b"hi") == b"hi\nbytes=2\n"


def _raw_tls(port: int, context: ssl.SSLContext, service: str = "db") -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname=server_name(service, DOMAIN)) as tls:
        tls.sendall(b"hello")
        return tls.recv(100)


async def test_no_certificate_a_denied_certificate_or_plain_tcp_is_refused(
    hosts: TwoHosts
) -> None:
    port = hosts.inbound.address.port
    anonymous = hosts.pki.client_context(None)
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        answer = await asyncio.to_thread(_raw_tls, port, anonymous)
        assert answer == b"", answer
        raise ConnectionResetError
    intruder = hosts.pki.client_context("cache")  # a real certificate, of a service not allowed
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        answer = await asyncio.to_thread(_raw_tls, port, intruder)
        assert answer == b"", answer
        raise ConnectionResetError
    assert hosts.inbound.stats.refused.get("denied") == 1
    allowed = hosts.pki.client_context("web")
    assert await asyncio.to_thread(_raw_tls, port, allowed) == b"hello"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        answer = await asyncio.wait_for(reader.read(-1), TIMEOUT)
    except ConnectionResetError:
        answer = b""
    assert b"HTTP" not in answer and b"bytes=" not in answer  # at most a TLS alert
    writer.close()


async def test_the_client_refuses_a_server_that_is_not_the_expected_service(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    cert, key = hosts.pki.files("cache")  # a rogue that holds another service's certificate
    rogue_port = free_port()
    rogue = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", f"127.0.0.1:{rogue_port}", "-cert", str(cert),
        "-key", str(key), "-tls1_3", "-quiet", "-CAfile", str(hosts.pki.cert_path),
        "-Verify", "1", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        hosts.outbound.update(hosts.snapshot(port=rogue_port))
        with pytest.raises((ConnectionResetError, AssertionError)):
            answer = await exchange(hosts.upstream.port, b"secret")
            assert answer == b"", answer
            raise ConnectionResetError
        listener = hosts.outbound.gates[0].listener
        assert listener is not None and listener.verify_failures >= 1  # type: ignore[attr-defined]
    finally:
        rogue.kill()
        await rogue.wait()


async def test_a_new_certificate_serves_new_connections_and_open_ones_carry_on(
    hosts: TwoHosts
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hosts.upstream.port)
    writer.write(b"before ")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(7), TIMEOUT) == b"before "
    for identities, service in ((hosts.a, "web"), (hosts.b, "db")):
        certificate, key = hosts.pki.identity(service)
        identities.install(service, certificate, key, hosts.pki.authority.pem, 0.0)
    assert await exchange(hosts.upstream.port, b"new") == b"new\nbytes=3\n"
    writer.write(b"after")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(-1), TIMEOUT) == b"after\nbytes=12\n"
    writer.close()


async def test_one_inbound_port_serves_several_services_by_server_name(hosts: TwoHosts) -> None:
    certificate, key = hosts.pki.identity("cache")
    hosts.b.install("cache", certificate, key, hosts.pki.authority.pem, 0.0)
    port = hosts.inbound.address.port
    web = hosts.pki.client_context("web")
    hosts.allow(Intention("web", "cache", "allow"))  # and web -> db falls to the default deny
    assert await asyncio.to_thread(_raw_tls, port, web, "cache") == b"hello"  # the switch
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        assert await asyncio.to_thread(_raw_tls, port, web, "db") == b""
        raise ConnectionResetError
    assert hosts.inbound.stats.refused == {"denied": 1}  # db was reached, and denied
    hosts.b.forget("db")  # the listener's own certificate: no name reaches it any more
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        await asyncio.to_thread(_raw_tls, port, web, "db")
    assert hosts.inbound.stats.refused == {"denied": 1}  # refused in the handshake itself


async def test_with_close_denied_a_new_deny_closes_open_connections(hosts: TwoHosts) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", hosts.upstream.port)
    writer.write(b"open ")
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"open "
    hosts.allow(Intention("web", "db", "allow"), Intention("*", "cache", "deny"))
    hosts.inbound.intentions_changed(hosts.intentions[0])  # without --mesh-close-denied
    writer.write(b"still ")
    assert await asyncio.wait_for(reader.readexactly(6), TIMEOUT) == b"still "
    hosts.inbound.close_denied = True
    hosts.allow(Intention("web", "db", "deny"))
    hosts.inbound.intentions_changed(hosts.intentions[0])
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), TIMEOUT)
    assert hosts.inbound.stats.closed_by_intentions == 1
    writer.close()


async def test_a_handshake_that_never_ends_leaves_no_count_behind(hosts: TwoHosts) -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    hosts.pump_a.handshake_timeout = 0.5
    hosts.outbound.update(hosts.snapshot(port=silent.getsockname()[1]))
    gate = hosts.outbound.gates[0]
    try:
        with pytest.raises(ConnectionResetError):
            await exchange(hosts.upstream.port, b"x")  # cut by the handshake timeout
        assert [b.active for b in gate.pool.backends.values()] == [0]
        assert not gate.connections and gate.occupancy.active == 0
    finally:
        silent.close()
