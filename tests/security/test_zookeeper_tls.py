"""zks://: TLS to ZooKeeper's secureClientPort, verified with --ca-file, with the client
certificate a server with ssl.clientAuth=need requires; a wrong CA, a missing certificate or
the plain port fail the start with a clear error instead of kazoo retrying forever."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.catalog import open_catalog
from pilotfish.config import ConfigError
from tests.fixtures.watching import seen_through_the_watch
from tests.fixtures.zookeeper_tls import TlsZooKeeper
from tests.security.certs import Pki, make_backend_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, tuple[Path, Path]]:
    """The test CA, a client certificate, an unrelated CA, and the server's certificate."""
    return make_backend_pki(tmp_path_factory.mktemp("zk-pki"))


@pytest.fixture(scope="module")
def tls_zookeeper(pki: tuple[Pki, tuple[Path, Path]]) -> Iterator[TlsZooKeeper]:
    """ZooKeeper requiring client certificates signed by the test CA on its TLS port."""
    made, (cert, key) = pki
    with TlsZooKeeper(made.ca, cert, key, client_auth="need") as server:
        yield server


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PILOTFISH_CA_FILE", "PILOTFISH_CLIENT_CERT", "PILOTFISH_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


def chroot() -> str:
    return f"/pf-tls/{uuid.uuid4().hex[:8]}"


def with_client_cert(monkeypatch: pytest.MonkeyPatch, made: Pki) -> None:
    monkeypatch.setenv("PILOTFISH_CLIENT_CERT", str(made.client_cert))
    monkeypatch.setenv("PILOTFISH_CLIENT_KEY", str(made.client_key))


async def test_zks_with_the_ca_and_a_client_certificate_works(
        tls_zookeeper: TlsZooKeeper, pki: tuple[Pki, tuple[Path, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with_client_cert(monkeypatch, pki[0])
    url = tls_zookeeper.tls_url(chroot())
    writer = await open_catalog(url, ca_file=str(pki[0].ca))
    monkeypatch.setenv("PILOTFISH_CA_FILE", str(pki[0].ca))
    reader = await open_catalog(url)
    try:
        await seen_through_the_watch(writer, reader, "z1")
    finally:
        await writer.close()
        await reader.close()


async def test_a_wrong_ca_is_refused_clearly(
        tls_zookeeper: TlsZooKeeper, pki: tuple[Pki, tuple[Path, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with_client_cert(monkeypatch, pki[0])
    started = time.monotonic()
    with pytest.raises(ConfigError) as wrong:
        await open_catalog(tls_zookeeper.tls_url(chroot()), ca_file=str(pki[0].other_ca))
    assert time.monotonic() - started < 2.5
    assert (f"TLS: its certificate is not signed by the CA of --ca-file {pki[0].other_ca}"
            in str(wrong.value))
    with pytest.raises(ConfigError, match="not signed by a CA this system trusts"):
        await open_catalog(tls_zookeeper.tls_url(chroot()))


async def test_a_missing_client_certificate_or_the_plain_port_is_named(
        tls_zookeeper: TlsZooKeeper, pki: tuple[Pki, tuple[Path, Path]]) -> None:
    ca = str(pki[0].ca)
    with pytest.raises(ConfigError, match="requires a client certificate.*PILOTFISH_CLIENT_CERT"):
        await open_catalog(tls_zookeeper.tls_url(chroot()), ca_file=ca)
    plain = f"zks://{tls_zookeeper.hosts}{chroot()}"
    with pytest.raises(ConfigError, match="is this ZooKeeper's secureClientPort"):
        await open_catalog(plain, ca_file=ca)
    with pytest.raises(ConfigError, match="--ca-file .*absent.pem: no such file"):
        await open_catalog(tls_zookeeper.tls_url(chroot()), ca_file="/nonexistent/absent.pem")
