"""The mesh CA: what `pilotfish ca init` makes, what it signs, and what it refuses."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pilotfish.catalog.model import InvalidField
from pilotfish.config import ConfigError
from pilotfish.mesh.ca import CertificateAuthority, cert_ttl
from pilotfish.mesh.identity import (
    peer_services,
    server_name,
    service_for_server_name,
    service_of,
    spiffe_id,
    trust_domain,
)
from pilotfish.mesh.keys import csr_pem, new_key
from tests.mesh.pki import DOMAIN, MeshPki


def test_ca_init_makes_a_ca_with_a_private_key_and_never_overwrites_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pilotfish", "ca", "init", "--dir", str(tmp_path / "ca"),
               "--trust-domain", DOMAIN]
    made = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    key = tmp_path / "ca" / "ca.key"
    assert key.stat().st_mode & 0o077 == 0
    before = key.read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and "exists" in again.stderr
    assert key.read_bytes() == before
    CertificateAuthority.load(str(tmp_path / "ca" / "ca.crt"), str(key), DOMAIN)


def test_issued_certificate_names_only_the_service_whatever_the_csr_asks(tmp_path: Path) -> None:
    pki = MeshPki.make(tmp_path)
    key = new_key()
    greedy = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")]))
              .add_extension(x509.SubjectAlternativeName([
                  x509.UniformResourceIdentifier(spiffe_id(DOMAIN, "db")),
                  x509.DNSName("db.example")]), critical=False)
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(key, hashes.SHA256()))
    issued = pki.authority.issue(greedy.public_bytes(serialization.Encoding.PEM).decode(),
                                 "web", 60)
    certificate = x509.load_pem_x509_certificate(issued.certificate.encode())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == [spiffe_id(DOMAIN, "web")]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 100 <= lifetime.total_seconds() <= 130  # 60 s plus the backdating
    leaf = tmp_path / "leaf.crt"
    leaf.write_text(issued.certificate)
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(pki.cert_path), "-purpose",
                               "sslclient", str(leaf)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_csr_that_does_not_prove_its_key_or_is_weak_is_refused(tmp_path: Path) -> None:
    pki = MeshPki.make(tmp_path)
    good = csr_pem(new_key(), "web", DOMAIN)
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][::-1])
    weak_key = rsa.generate_private_key(65537, 1024)
    weak = (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
            .sign(weak_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    small_curve = csr_pem(ec.generate_private_key(ec.SECP224R1()), "web", DOMAIN)  # type: ignore[arg-type]
    for bad in ("", "not a csr", tampered, weak, small_curve, "x" * 20_000):
        with pytest.raises(InvalidField) as refused:
            pki.authority.issue(bad, "web", 60)
        assert refused.value.field == "csr"
    with pytest.raises(InvalidField) as refused:
        pki.authority.issue(good, "not a label", 60)
    assert refused.value.field == "service"


def test_an_operator_ca_must_be_a_ca_whose_key_matches(tmp_path: Path) -> None:
    one, other = MeshPki.make(tmp_path / "one"), MeshPki.make(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not belong"):
        CertificateAuthority.load(str(one.cert_path), str(other.key_path), DOMAIN)
    leaf_cert, leaf_key = one.files("web")
    with pytest.raises(ConfigError, match="not a CA"):
        CertificateAuthority.load(str(leaf_cert), str(leaf_key), DOMAIN)
    with pytest.raises(ConfigError, match="cannot read"):
        CertificateAuthority.load(str(tmp_path / "absent.crt"), str(one.key_path), DOMAIN)
    with pytest.raises(ConfigError, match="--trust-domain"):
        CertificateAuthority.load(str(one.cert_path), str(one.key_path), "Not A Domain")


def test_identities_and_server_names_round_trip_and_refuse_strangers() -> None:
    assert service_of(spiffe_id(DOMAIN, "Web"), DOMAIN) == "web"
    assert service_of("spiffe://other.mesh/service/web", DOMAIN) is None
    assert service_of(f"spiffe://{DOMAIN}/service/web/extra", DOMAIN) is None
    assert service_for_server_name(server_name("api", DOMAIN), DOMAIN) == "api"
    assert service_for_server_name("api.svc.evil.example", DOMAIN) is None
    assert service_for_server_name(None, DOMAIN) is None
    assert peer_services({"subjectAltName": (("URI", spiffe_id(DOMAIN, "db")),
                                             ("DNS", "db"))}, DOMAIN) == ["db"]
    with pytest.raises(InvalidField):
        trust_domain("UPPER.case")
    assert cert_ttl(60.0) == 60
    for bad in (0, 4, True, "60", 10**9):
        with pytest.raises(InvalidField):
            cert_ttl(bad)


def test_a_certificate_from_the_ca_completes_a_tls13_handshake(tmp_path: Path) -> None:
    pki = MeshPki.make(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=pki.authority.pem)
    from pilotfish.mesh.keys import load_identity

    load_identity(server, *pki.identity("db"))
    client = pki.client_context("web")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(incoming, outgoing, server_hostname=server_name("db", DOMAIN))
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(outgoing.read())
        incoming.write(s_out.read())
    assert peer_services(c.getpeercert(), DOMAIN) == ["db"]
    assert peer_services(s.getpeercert(), DOMAIN) == ["web"]
