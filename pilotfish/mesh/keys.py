"""The requester's side of issuance: a key made on this host, a CSR that proves it, and the
key and certificate loaded into TLS contexts without ever being kept on disk.

Python's ssl loads a certificate chain only from files, so the key is written to a file
readable by this user only, in a private folder of /dev/shm (memory) where there is one,
loaded, and unlinked at once: it lives on in the SSL context, in memory.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pilotfish.mesh.identity import spiffe_id

MEMORY_FOLDER = "/dev/shm"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (fast handshakes, small certificates)."""
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: ec.EllipticCurvePrivateKey, service: str, domain: str) -> str:
    """A CSR for `service` signed with `key` (the CA keeps only the key from it)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(spiffe_id(domain, service))]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key in PEM (PKCS#8, unencrypted): only ever written by `private_files`."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@contextlib.contextmanager
def private_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths of files holding `contents`, owner-only, removed (with their folder) on exit."""
    parent = MEMORY_FOLDER if os.path.isdir(MEMORY_FOLDER) and os.access(
        MEMORY_FOLDER, os.W_OK) else None
    folder = tempfile.mkdtemp(prefix="pilotfish-mesh-", dir=parent)  # mode 0700
    paths = []
    try:
        for number, content in enumerate(contents):
            path = os.path.join(folder, str(number))
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
            paths.append(path)
        yield paths
    finally:
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def load_identity(context: ssl.SSLContext, certificate: str,
                  key: ec.EllipticCurvePrivateKey) -> None:
    """Load a certificate and its key into `context` (ssl.SSLError if they do not match)."""
    with private_files(certificate.encode(), key_pem(key)) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path)
