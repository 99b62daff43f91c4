"""Certificates from a real registry API process, renewed at two thirds of their life while
connections run: open ones carry on, new ones keep being served, none is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.mesh.issuer import IssueFailed, IssuerClient
from pilotfish.mesh.keeper import CertificateKeeper
from pilotfish.mesh.keys import csr_pem, new_key
from tests.fixtures.process import PilotfishProcess
from tests.mesh.harness import two_hosts
from tests.mesh.pki import DOMAIN, MeshPki, start_ca_registry
from tests.mesh.test_tunnels import exchange

TTL = 6  # seconds: renewed every 4
ACL = """default_read = false
[[token]]
name = "host-a"
secret = "host-a-secret"
scopes = ["read", "write:web"]
[[token]]
name = "host-b"
secret = "host-b-secret"
scopes = ["read", "write:db"]
"""


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PilotfishProcess, MeshPki]]:
    api, pki = start_ca_registry(tmp_path_factory.mktemp("ca"), ACL,
                                 "--mesh-max-cert-ttl", str(TTL))
    with api:
        yield api, pki


async def test_the_api_signs_only_what_the_token_may_write(
    issuer: tuple[PilotfishProcess, MeshPki]
) -> None:
    api, _ = issuer
    client = IssuerClient(api.api, "host-a-secret")
    try:
        signed = await client.issue("web", csr_pem(new_key(), "web", DOMAIN), None)
        assert TTL - 2 < signed.expires_at - time.time() <= TTL + 1
        with pytest.raises(IssueFailed) as refused:
            await client.issue("db", csr_pem(new_key(), "db", DOMAIN), None)
        assert refused.value.refused and "write:db" in str(refused.value)
        assert "host-a-secret" not in str(refused.value)
    finally:
        await client.close()


async def test_rotation_during_traffic_loses_no_connection(
    issuer: tuple[PilotfishProcess, MeshPki], tmp_path: Path
) -> None:
    api, pki = issuer
    async with two_hosts(pki) as hosts:
        clients = [IssuerClient(api.api, "host-a-secret"), IssuerClient(api.api, "host-b-secret")]
        keepers = [CertificateKeeper(hosts.a, clients[0]), CertificateKeeper(hosts.b, clients[1])]
        keepers[0].want({"web"})
        keepers[1].want({"db"})
        try:
            for keeper, service in zip(keepers, ("web", "db"), strict=True):
                assert await keeper.ready(service, 5)
            first_a = hosts.a.held["web"].client
            reader, writer = await asyncio.open_connection("127.0.0.1", hosts.upstream.port)
            sent = received = 0
            deadline = time.monotonic() + TTL + 1  # past one renewal of each side
            new_ok = 0
            while time.monotonic() < deadline:
                writer.write(b"x" * 1000)
                sent += 1000
                received += len(await asyncio.wait_for(reader.readexactly(1000), 5))
                assert await exchange(hosts.upstream.port, b"new") == b"new\nbytes=3\n"
                new_ok += 1
                await asyncio.sleep(0.05)
            writer.write_eof()
            tail = await asyncio.wait_for(reader.read(-1), 5)
            assert tail == f"\nbytes={sent}\n".encode() and received == sent
            writer.close()
            assert keepers[0].issued >= 2 and keepers[1].issued >= 2  # both renewed
            assert hosts.a.held["web"].client is not first_a
            assert new_ok > 20 and hosts.inbound.stats.refused == {}
        finally:
            for keeper in keepers:
                await keeper.stop()
            for client in clients:
                await client.close()
