"""A test CA and certificates made with the openssl command line, in a temporary folder."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    return cert, key


def issue(folder: Path, ca: tuple[Path, Path], name: str, san: str,
          usage: str) -> tuple[Path, Path]:
    """A leaf certificate signed by `ca` for `san` (`IP:127.0.0.1`), serverAuth or clientAuth."""
    cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=folder)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext),
             cwd=folder)
    return cert, key


@dataclass(frozen=True)
class Pki:
    """The CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(folder: Path) -> Pki:
    """Everything a TLS test needs, made fresh (a few hundred ms)."""
    ca = make_ca(folder, "test-ca")
    server = issue(folder, ca, "server", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    client = issue(folder, ca, "client", "DNS:client.test", "clientAuth")
    other = make_ca(folder, "other-ca")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other[0])


def make_backend_pki(folder: Path) -> tuple[Pki, tuple[Path, Path]]:
    """make_pki, plus a certificate for a backend server on 127.0.0.1 usable for both ends
    (etcd dials itself with its own certificate when it requires client certificates)."""
    made = make_pki(folder)
    backend = issue(folder, (made.ca, folder / "test-ca.key"), "backend",
                    "IP:127.0.0.1,DNS:localhost", "serverAuth,clientAuth")
    return made, backend
