"""TLS on the registry API and the LB's HTTP port, with a test CA made here: clients that trust
it work; a wrong CA, or no client certificate where one is required, is refused clearly."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest

from pilotfish.catalog import BackendUnavailable, Instance, open_catalog
from tests.fixtures.process import StartPilotfish, start_pilotfish
from tests.security.certs import Pki, make_pki


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _https(pilotfish: StartPilotfish, pki: Pki, *extra: str) -> str:
    running = pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0",
                        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
                        *extra)
    assert any("listening on https://" in line for line in running.lines)
    return "https://" + running.listening["registry API"]


@pytest.fixture
def no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PILOTFISH_TOKEN", "PILOTFISH_CA_FILE", "PILOTFISH_CLIENT_CERT",
                 "PILOTFISH_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)


async def test_the_https_catalog_works_with_the_ca_and_is_refused_without_it(
        pilotfish: StartPilotfish, pki: Pki, no_client_env: None) -> None:
    url = _https(pilotfish, pki)
    trusting = await open_catalog(url, ca_file=str(pki.ca))
    wrong_ca = await open_catalog(url, ca_file=str(pki.other_ca))
    system_ca = await open_catalog(url)
    try:
        lease = await trusting.create_lease(10, "tls")
        await trusting.register(Instance(service="web", id="t1", address="10.0.0.1", port=80,
                                         lease=lease.id))
        assert (await trusting.snapshot()).get("t1") is not None
        for refused in (wrong_ca, system_ca):
            with pytest.raises(BackendUnavailable) as caught:
                await refused.create_lease(10)
            assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
            assert "--ca-file" in str(caught.value)
        assert not await wrong_ca.healthy()
    finally:
        for catalog in (trusting, wrong_ca, system_ca):
            await catalog.close()


async def test_a_client_certificate_is_required_with_tls_client_ca(
        pilotfish: StartPilotfish, pki: Pki, no_client_env: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = _https(pilotfish, pki, "--tls-client-ca", str(pki.ca))
    anonymous = await open_catalog(url, ca_file=str(pki.ca))
    monkeypatch.setenv("PILOTFISH_CLIENT_CERT", str(pki.client_cert))
    monkeypatch.setenv("PILOTFISH_CLIENT_KEY", str(pki.client_key))
    with_cert = await open_catalog(url, ca_file=str(pki.ca))
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await anonymous.create_lease(10)
        assert "no client certificate was offered" in str(caught.value)
        assert "PILOTFISH_CLIENT_CERT" in str(caught.value)
        lease = await with_cert.create_lease(10, "mtls")
        assert (await with_cert.keepalive(lease.id)).id == lease.id
    finally:
        await anonymous.close()
        await with_cert.close()


def test_pilotfish_register_over_https_with_ca_file(
        pilotfish: StartPilotfish, pki: Pki, no_client_env: None) -> None:
    url = _https(pilotfish, pki)
    held = pilotfish("register", "--registry", url, "--ca-file", str(pki.ca),
                     "web/tls-1=127.0.0.1:8080", expect=())
    deadline = time.monotonic() + 10
    while True:
        body = httpx.get(url + "/v1/services/web", verify=trusting(pki.ca), timeout=5).json()
        if [i["id"] for i in body["instances"]] == ["tls-1"]:
            break
        assert time.monotonic() < deadline, held.lines
        time.sleep(0.1)
    assert held.stop() == 0


def test_the_lb_http_port_serves_https(pki: Pki) -> None:
    lb = start_pilotfish("lb", "--lb-api", "127.0.0.1:0", "--tls-cert", str(pki.server_cert),
                         "--tls-key", str(pki.server_key), expect=("lb API",))
    try:
        base = "https://" + lb.listening["lb API"]
        assert httpx.get(base + "/metrics", verify=trusting(pki.ca), timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(base + "/metrics", verify=trusting(pki.other_ca), timeout=5)
    finally:
        lb.stop()


@pytest.mark.parametrize(("flags", "message"), [
    (["--tls-cert", "CERT"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "CERT", "--tls-key", "OTHER_KEY"], "--tls-cert/--tls-key"),
    (["--tls-cert", "CERT", "--tls-key", "/nonexistent/key.pem"], "--tls-key: cannot read"),
    (["--tls-client-ca", "CA"], "--tls-client-ca needs --tls-cert"),
])
def test_bad_tls_flags_are_named(pki: Pki, flags: list[str], message: str) -> None:
    paths = {"CERT": str(pki.server_cert), "OTHER_KEY": str(pki.client_key), "CA": str(pki.ca)}
    with pytest.raises(RuntimeError, match="pilotfish: ") as caught:
        start_pilotfish("registry", "--api", "127.0.0.1:0",
                        *[paths.get(f, f) for f in flags], timeout=10)
    assert message in str(caught.value)
