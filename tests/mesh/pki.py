"""A mesh CA in a temporary folder and certificates from it, made the way the mesh makes them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from pilotfish.mesh.ca import CertificateAuthority, create_ca
from pilotfish.mesh.keys import csr_pem, load_identity, new_key
from tests.fixtures.process import PilotfishProcess, start_pilotfish

DOMAIN = "test.mesh"


@dataclass
class MeshPki:
    """A CA (files and the loaded authority) that issues service certificates in-process."""

    folder: Path
    cert_path: Path
    key_path: Path
    authority: CertificateAuthority

    @classmethod
    def make(cls, folder: Path, domain: str = DOMAIN) -> MeshPki:
        cert, key = create_ca(str(folder), domain)
        return cls(folder, cert, key, CertificateAuthority.load(str(cert), str(key), domain))

    def identity(self, service: str, ttl: int = 300) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """A certificate (PEM) for `service` and its key."""
        key = new_key()
        issued = self.authority.issue(csr_pem(key, service, self.authority.trust_domain),
                                      service, ttl)
        return issued.certificate, key

    def files(self, service: str, ttl: int = 300) -> tuple[Path, Path]:
        """A certificate and key for `service` written to files (for openssl and HAProxy)."""
        from pilotfish.mesh.keys import key_pem

        certificate, key = self.identity(service, ttl)
        cert_path, key_path = self.folder / f"{service}.crt", self.folder / f"{service}.key"
        cert_path.write_text(certificate)
        key_path.write_bytes(key_pem(key))
        return cert_path, key_path

    def client_context(self, service: str | None) -> ssl.SSLContext:
        """A TLS 1.3 client context trusting the CA, presenting `service`'s certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False
        context.load_verify_locations(cadata=self.authority.pem)
        if service is not None:
            load_identity(context, *self.identity(service))
        return context


def start_ca_registry(folder: Path, acl: str, *flags: str) -> tuple[PilotfishProcess, MeshPki]:
    """A real `pilotfish registry` with this ACL and a new CA in `folder`, signing for DOMAIN
    (use the process as a context manager: it stops on leaving)."""
    (folder / "acl.toml").write_text(acl)
    pki = MeshPki.make(folder / "ca")
    api = start_pilotfish("registry", "--api", "127.0.0.1:0", "--acl", str(folder / "acl.toml"),
                          "--mesh-ca-cert", str(pki.cert_path), "--mesh-ca-key",
                          str(pki.key_path), "--trust-domain", DOMAIN, *flags, timeout=60.0)
    return api, pki
