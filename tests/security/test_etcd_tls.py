"""etcds://: TLS to etcd, verified with --ca-file, with a client certificate where etcd requires
one (--client-cert-auth); a wrong CA or a missing certificate fails the start with a clear
error. The CA and certificates are made in the test with openssl."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.catalog import Instance, open_catalog
from pilotfish.catalog.backends.etcd.secure import security_from_url
from pilotfish.config import ConfigError
from tests.fixtures.etcd_secure import EtcdTls, EtcdUser, SecureEtcd
from tests.fixtures.watching import ids, seen_through_the_watch, wait_until
from tests.security.certs import Pki, make_backend_pki

PASSWORD = "pf-tls-pw"
PREFIX = "pf-tls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, tuple[Path, Path]]:
    """The test CA, a client certificate, an unrelated CA, and etcd's own certificate."""
    return make_backend_pki(tmp_path_factory.mktemp("etcd-pki"))


@pytest.fixture(scope="module")
def tls_etcd(pki: tuple[Pki, tuple[Path, Path]]) -> Iterator[SecureEtcd]:
    """TLS and a password: the user `pf` has readwrite on /pf-tls/."""
    made, (cert, key) = pki
    with SecureEtcd(EtcdTls(made.ca, cert, key)) as server:
        server.enable_auth("root-tls-pw", [EtcdUser("pf", PASSWORD, PREFIX)])
        yield server


@pytest.fixture(scope="module")
def mtls_etcd(pki: tuple[Pki, tuple[Path, Path]]) -> Iterator[SecureEtcd]:
    """Mutual TLS: only clients with a certificate signed by the test CA get in."""
    made, (cert, key) = pki
    tls = EtcdTls(made.ca, cert, key, made.client_cert, made.client_key,
                  require_client_cert=True)
    with SecureEtcd(tls) as server:
        yield server


def prefix() -> str:
    return f"{PREFIX}/{uuid.uuid4().hex[:8]}"


def web(instance_id: str, lease: str) -> Instance:
    return Instance(service="web", id=instance_id, address="10.0.0.1", port=80, lease=lease)


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PILOTFISH_CA_FILE", "PILOTFISH_CLIENT_CERT", "PILOTFISH_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


async def test_etcds_with_the_ca_and_a_user_works(
        tls_etcd: SecureEtcd, pki: tuple[Pki, tuple[Path, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = tls_etcd.url(prefix(), f"pf:{PASSWORD}")
    writer = await open_catalog(url, ca_file=str(pki[0].ca))
    monkeypatch.setenv("PILOTFISH_CA_FILE", str(pki[0].ca))  # the other way to name the CA
    reader = await open_catalog(url)
    try:
        await seen_through_the_watch(writer, reader, "s1")
    finally:
        await writer.close()
        await reader.close()


async def test_a_wrong_ca_is_refused_clearly(
        tls_etcd: SecureEtcd, pki: tuple[Pki, tuple[Path, Path]]) -> None:
    url = tls_etcd.url(prefix(), f"pf:{PASSWORD}")
    started = time.monotonic()
    with pytest.raises(ConfigError) as wrong:
        await open_catalog(url, ca_file=str(pki[0].other_ca))
    assert time.monotonic() - started < 2.5
    assert ("TLS: etcd's certificate is not signed by the CA of --ca-file "
            f"{pki[0].other_ca}") in str(wrong.value)
    assert PASSWORD not in str(wrong.value)
    with pytest.raises(ConfigError, match="not signed by a CA this system trusts"):
        await open_catalog(url)


def test_the_command_line_exits_2_on_a_wrong_ca(
        tls_etcd: SecureEtcd, pki: tuple[Pki, tuple[Path, Path]]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pilotfish", "registry", "--registry",
         tls_etcd.url(prefix(), f"pf:{PASSWORD}"), "--ca-file", str(pki[0].other_ca)],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "pilotfish: etcd" in done.stderr and "CERTIFICATE_VERIFY_FAILED" in done.stderr
    assert "Traceback" not in done.stderr and PASSWORD not in done.stderr


async def test_mutual_tls_needs_the_client_certificate(
        mtls_etcd: SecureEtcd, pki: tuple[Pki, tuple[Path, Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    made = pki[0]
    url = mtls_etcd.url(prefix())
    with pytest.raises(ConfigError, match="requires a client certificate.*PILOTFISH_CLIENT_CERT"):
        await open_catalog(url, ca_file=str(made.ca))
    monkeypatch.setenv("PILOTFISH_CLIENT_CERT", str(made.client_cert))
    monkeypatch.setenv("PILOTFISH_CLIENT_KEY", str(made.client_key))
    catalog = await open_catalog(url, ca_file=str(made.ca))
    try:
        lease = await catalog.create_lease(10, "mtls-test")
        assert await catalog.register(web("m1", lease.id))
        await wait_until(catalog, lambda s: ids(s, "web") == {"m1"}, 5)
    finally:
        await catalog.close()


def test_tls_settings_come_from_the_url_flags_and_environment(
        pki: tuple[Pki, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    made = pki[0]
    plain, security = security_from_url("etcd://u:pw@h:1/x", str(made.ca))
    assert plain == "etcd://h:1/x" and not security.tls and security.credentials == ("u", "pw")
    url, security = security_from_url("etcds://h:1,h2:2/x?timeout=1", str(made.ca))
    assert url == "etcd://h:1,h2:2/x?timeout=1" and security.tls
    assert security.ca_file == str(made.ca) and security.credentials is None
    monkeypatch.setenv("PILOTFISH_CA_FILE", str(made.other_ca))
    monkeypatch.setenv("PILOTFISH_CLIENT_CERT", str(made.client_cert))
    _, from_env = security_from_url("etcds://h:1/x")
    assert from_env.ca_file == str(made.other_ca)
    assert from_env.client_cert == str(made.client_cert)
    with pytest.raises(ConfigError, match="needs both PILOTFISH_CLIENT_CERT and "
                                          "PILOTFISH_CLIENT_KEY"):
        from_env.channel_credentials()
    monkeypatch.delenv("PILOTFISH_CLIENT_CERT")
    _, missing = security_from_url("etcds://h:1/x", str(tmp_path / "nope.crt"))
    with pytest.raises(ConfigError, match=r"--ca-file .*nope\.crt: No such file"):
        missing.channel_credentials()
    (tmp_path / "junk.crt").write_text("not a certificate")
    _, junk = security_from_url("etcds://h:1/x", str(tmp_path / "junk.crt"))
    with pytest.raises(ConfigError, match="not a PEM file"):
        junk.channel_credentials()


async def test_unreadable_tls_files_fail_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ca-file"):
        await open_catalog("etcds://127.0.0.1:1/x", ca_file=str(tmp_path / "absent.pem"))
