"""Hostile clients on a TLS listener: connections still in their handshake count against the
connection cap and the request deadline, and plain HTTP to the TLS port gets a clear answer.

Figures (fds and RSS before, during and after a flood) are printed with `pytest -s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pilotfish.http.limits import HttpLimits
from pilotfish.http.tls import TlsSettings
from tests.e2e.test_http_limits import metric, running_api
from tests.fixtures.process import start_pilotfish
from tests.security.certs import Pki, make_pki

CAP = 20
QUICK = HttpLimits(request_timeout=0.5, max_connections=CAP)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def mutual(pki: Pki) -> TlsSettings:
    return TlsSettings(str(pki.server_cert), str(pki.server_key), str(pki.ca))


def client_context(pki: Pki) -> ssl.SSLContext:
    """What a legitimate client presents: it trusts the CA and has a client certificate."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def client_hello() -> bytes:
    """The first flight of a real TLS client: a handshake that the sender never finishes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = context.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        handshake.do_handshake()
    return outgoing.read()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (whatever it said first)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_handshakes_count_against_the_cap_and_the_request_deadline(pki: Pki) -> None:
    async with running_api(QUICK, tls=mutual(pki)) as api:
        listener = api.server.listener
        silent = [await api.connect() for _ in range(2 * CAP)]
        hello = client_hello()
        stalled = []
        for _ in range(CAP // 2):
            reader, writer = await api.connect()
            writer.write(hello)
            stalled.append((reader, writer))
        await asyncio.sleep(0.1)
        assert len(listener.connections) <= CAP
        # A real client still gets in while the flood holds every slot.
        base = f"https://{api.server.address.host}:{api.server.address.port}"
        async with httpx.AsyncClient(verify=client_context(pki), timeout=5) as client:
            assert (await client.get(base + "/v1/services")).status_code == 200
        flood = silent + stalled
        started = time.monotonic()
        closed = await asyncio.gather(*(closed_within(reader, QUICK.request_timeout + 1.0)
                                        for reader, _ in flood))
        assert all(closed), f"{closed.count(False)} of {len(flood)} handshakes still open " \
                            f"after {time.monotonic() - started:.1f}s"
        for _, writer in flood:
            writer.close()
        await asyncio.sleep(0.1)
        assert not listener.connections


async def test_plain_http_to_the_tls_port_gets_a_clear_400(pki: Pki) -> None:
    """Issue 21, item 12 (part): nginx's "The plain HTTP request was sent to HTTPS port"."""
    async with running_api(QUICK, tls=mutual(pki)) as api:
        reader, writer = await api.connect()
        writer.write(b"GET /v1/services HTTP/1.1\r\nhost: x\r\n\r\n")
        said = await asyncio.wait_for(reader.read(-1), 3)
        writer.close()
        assert said.startswith(b"HTTP/1.1 400 "), said
        assert b"HTTPS" in said and b"connection: close" in said.lower()
        base = f"https://{api.server.address.host}:{api.server.address.port}"
        async with httpx.AsyncClient(verify=client_context(pki), timeout=5) as client:
            scraped = (await client.get(base + "/metrics")).content
        assert metric(scraped, 'pilotfish_http_refused_total{listener="registry API",'
                               'status="400"}') == 1


# Figures from a real process ------------------------------------------------------------

FLOOD = 1500  # silent connections
STALLED = 100  # connections that send a ClientHello and nothing more


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def tls_flood(host: str, port: int) -> Iterator[list[socket.socket]]:
    """FLOOD silent connections and STALLED half-begun handshakes, closed when the block ends."""
    sockets: list[socket.socket] = []
    hello = client_hello()
    try:
        for n in range(FLOOD + STALLED):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((host, port))
            sockets.append(sock)
            if n >= FLOOD:
                with contextlib.suppress(OSError):
                    sock.send(hello)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_tls_flood_gives_back_its_files_and_memory(tmp_path: Path, pki: Pki) -> None:
    """Issue 21, item 4: silent connections to a mutual-TLS listener were held for asyncio's
    60 s handshake timeout, outside the connection cap (fds 16 -> 3,016, RSS +167 MB)."""
    with start_pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0",
                         "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                         "--tls-client-ca", str(pki.ca)) as registry:
        host, port = registry.listening["registry API"].rsplit(":", 1)
        pid = registry.process.pid
        base = f"https://{host}:{port}"
        httpx.get(base + "/v1/services", verify=client_context(pki), timeout=5)
        fds_before, rss_before = _open_files(pid), _rss_mib(pid)
        with tls_flood(host, int(port)):
            time.sleep(1.0)
            fds_during, rss_during = _open_files(pid), _rss_mib(pid)
            answered = httpx.get(base + "/v1/services", verify=client_context(pki), timeout=5)
            deadline = time.monotonic() + 13
            while _open_files(pid) > fds_before + 5 and time.monotonic() < deadline:
                time.sleep(0.25)
            fds_after, rss_after = _open_files(pid), _rss_mib(pid)
            held = time.monotonic() - deadline + 13
        print(f"\nTLS flood of {FLOOD} silent + {STALLED} stalled handshakes: "
              f"fds {fds_before} -> {fds_during} -> {fds_after}, RSS {rss_before:.0f} -> "
              f"{rss_during:.0f} -> {rss_after:.0f} MiB, all closed by the server after "
              f"{held:.1f}s; a real client got {answered.status_code} during the flood")
        assert answered.status_code == 200
        assert fds_during <= fds_before + 1024 + 64
        assert fds_after <= fds_before + 5
        assert rss_after - rss_before < 32
