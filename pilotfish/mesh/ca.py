"""The mesh's certificate authority: made by `pilotfish ca init` or supplied by an operator,
it signs short-lived certificates whose one name is a service's SPIFFE ID.

The CA decides what a certificate says: of a CSR only the public key (and its proof of
possession, the CSR's signature) is used. Whatever subject or names the CSR asks for are
ignored, so a token allowed to write `web` gets a certificate for `web` and nothing else.
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilotfish.catalog.model import InvalidField, service_name
from pilotfish.config import ConfigError
from pilotfish.mesh.identity import spiffe_id, trust_domain

MIN_CERT_TTL = 5
MAX_CERT_TTL = 30 * 86_400
DEFAULT_CERT_TTL = 3_600
BACKDATE = 60  # seconds a certificate is valid before it was issued: hosts' clocks differ
MAX_CSR = 16 * 1024
CA_DAYS = 3_650

IssuerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the CA signed: its PEM, the CA's PEM, its serial and its end of life."""

    service: str
    identity: str
    certificate: str
    ca: str
    serial: str
    expires_at: float  # wall clock

    def to_dict(self) -> dict[str, object]:
        """The API's answer."""
        return {"service": self.service, "spiffe_id": self.identity,
                "certificate": self.certificate, "ca": self.ca, "serial": self.serial,
                "expires_at": self.expires_at}


class CertificateAuthority:
    """A CA certificate and its key, signing service certificates in one trust domain."""

    def __init__(self, certificate: x509.Certificate, key: IssuerKey, domain: str) -> None:
        self.certificate = certificate
        self.key = key
        self.trust_domain = trust_domain(domain)
        self.pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load(cls, cert_path: str, key_path: str, domain: str) -> CertificateAuthority:
        """Read an operator's (or `ca init`'s) CA; each problem is a ConfigError naming a flag."""
        try:
            certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        except OSError as exc:
            raise ConfigError(f"--mesh-ca-cert: cannot read {cert_path!r}: {exc.strerror}") \
                from None
        except ValueError:
            raise ConfigError(f"--mesh-ca-cert: {cert_path!r} is not a PEM certificate") \
                from None
        try:
            key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
        except OSError as exc:
            raise ConfigError(f"--mesh-ca-key: cannot read {key_path!r}: {exc.strerror}") \
                from None
        except (ValueError, TypeError):
            raise ConfigError(f"--mesh-ca-key: {key_path!r} is not an unencrypted PEM "
                              "private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                          | ed25519.Ed25519PrivateKey):
            raise ConfigError("--mesh-ca-key: an EC, RSA or Ed25519 key is needed")
        if key.public_key().public_bytes(*_SPKI) != certificate.public_key().public_bytes(*_SPKI):
            raise ConfigError("--mesh-ca-key does not belong to --mesh-ca-cert")
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise ConfigError("--mesh-ca-cert is not a CA certificate (basicConstraints CA:TRUE)")
        if certificate.not_valid_after_utc <= _now():
            raise ConfigError("--mesh-ca-cert has expired")
        try:
            return cls(certificate, key, domain)
        except InvalidField as exc:
            raise ConfigError(f"--trust-domain: {exc.message}") from None

    def issue(self, csr_pem: str, service: str, ttl: int = DEFAULT_CERT_TTL) -> Issued:
        """Sign the CSR's key for `service` for `ttl` seconds (cut at the CA's own end)."""
        name = service_name(service)
        csr = parse_csr(csr_pem)
        now = _now()
        not_after = min(now + datetime.timedelta(seconds=ttl), self.certificate.not_valid_after_utc)
        identity = spiffe_id(self.trust_domain, name)
        public_key = csr.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(secrets.randbits(127) | 1)
            .not_valid_before(now - datetime.timedelta(seconds=BACKDATE))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.certificate.public_key()), critical=False)  # type: ignore[arg-type]
        )
        algorithm = None if isinstance(self.key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        signed = builder.sign(self.key, algorithm)
        return Issued(name, identity, signed.public_bytes(serialization.Encoding.PEM).decode(),
                      self.pem, format(signed.serial_number, "x"), not_after.timestamp())


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature proves its key, with a key good enough; InvalidField('csr')."""
    if not isinstance(csr_pem, str) or len(csr_pem) > MAX_CSR:
        raise InvalidField("csr", f"must be a PEM certificate signing request of at most "
                                  f"{MAX_CSR} characters")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, UnicodeEncodeError):
        raise InvalidField("csr", "not a PEM certificate signing request") from None
    if not valid:
        raise InvalidField("csr", "its signature does not verify: the requester must hold "
                                  "the key")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise InvalidField("csr", f"EC curve {key.curve.name} is not allowed (P-256, P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidField("csr", f"an RSA key of {key.key_size} bits is too small (2048+)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise InvalidField("csr", "the key must be EC (P-256, P-384), RSA (2048+) or Ed25519")
    return csr


def cert_ttl(value: object, maximum: int = MAX_CERT_TTL, field: str = "ttl") -> int:
    """A certificate lifetime in seconds within [MIN_CERT_TTL, maximum], or InvalidField."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not MIN_CERT_TTL <= value <= maximum:
        raise InvalidField(field, f"must be a whole number of seconds from {MIN_CERT_TTL} "
                                  f"to {maximum}")
    return value


def create_ca(folder: str, domain: str, days: int = CA_DAYS) -> tuple[Path, Path]:
    """Make a new CA (EC P-256) in `folder`: ca.crt, and ca.key readable by its owner only.

    Refuses to overwrite an existing CA: its certificates would stop verifying.
    """
    domain = trust_domain(domain)
    target = Path(folder)
    cert_path, key_path = target / "ca.crt", target / "ca.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise ConfigError(f"{path} exists: a CA is there already (remove it first to "
                              "start over; every certificate it signed stops verifying)")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pilotfish mesh CA {domain}")])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(now - datetime.timedelta(seconds=BACKDATE))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.UniformResourceIdentifier(domain)],
            excluded_subtrees=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
