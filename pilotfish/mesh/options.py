"""The mesh's command-line flags: the CA on the registry API (`registry`, `up`)."""

from __future__ import annotations

import argparse

from pilotfish.catalog.model import InvalidField
from pilotfish.config import ConfigError, env
from pilotfish.mesh.ca import DEFAULT_CERT_TTL, MAX_CERT_TTL, CertificateAuthority, cert_ttl
from pilotfish.mesh.identity import DEFAULT_TRUST_DOMAIN


def _ttl_flag(flag: str) -> type[int]:
    def parse(value: str) -> int:
        try:
            return cert_ttl(int(value) if value.isascii() and value.isdigit() else value)
        except InvalidField as exc:
            raise argparse.ArgumentTypeError(f"{flag}: {exc.message}") from None
    return parse  # type: ignore[return-value]


def add_trust_domain_flag(group: argparse._ArgumentGroup) -> None:
    """--trust-domain: every identity is spiffe://<it>/service/<name>."""
    group.add_argument("--trust-domain", default=env("trust_domain", DEFAULT_TRUST_DOMAIN),
                       help="the mesh's trust domain: identities are spiffe://DOMAIN/service/"
                            f"NAME (default {DEFAULT_TRUST_DOMAIN}) [PILOTFISH_TRUST_DOMAIN]")


def add_issuer_flags(parser: argparse.ArgumentParser) -> None:
    """The registry API's CA: with both files it signs service certificates."""
    group = parser.add_argument_group("service mesh CA (see docs/mtls.md)")
    group.add_argument("--mesh-ca-cert", default=env("mesh_ca_cert"), metavar="FILE",
                       help="the mesh CA's certificate (from `pilotfish ca init`, or an "
                            "operator's CA); with --mesh-ca-key the API issues service "
                            "certificates at /v1/mesh/certificates [PILOTFISH_MESH_CA_CERT]")
    group.add_argument("--mesh-ca-key", default=env("mesh_ca_key"), metavar="FILE",
                       help="the mesh CA's private key [PILOTFISH_MESH_CA_KEY]")
    group.add_argument("--mesh-max-cert-ttl", type=_ttl_flag("--mesh-max-cert-ttl"),
                       default=env("mesh_max_cert_ttl", str(DEFAULT_CERT_TTL)),
                       metavar="SECONDS",
                       help=f"the longest (and default) life of an issued certificate "
                            f"(default {DEFAULT_CERT_TTL}, at most {MAX_CERT_TTL}) "
                            "[PILOTFISH_MESH_MAX_CERT_TTL]")
    add_trust_domain_flag(group)


def authority_from(args: argparse.Namespace) -> CertificateAuthority | None:
    """The CA the flags name, or None when the API issues no certificates."""
    cert, key = args.mesh_ca_cert, args.mesh_ca_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("--mesh-ca-cert and --mesh-ca-key go together")
    return CertificateAuthority.load(cert, key, args.trust_domain)
