"""The mesh's command-line flags: the CA on the registry API (`registry`, `up`), and the
sidecar's inbound port, upstreams and certificates (`sidecar`, `up --docker`)."""

from __future__ import annotations

import argparse
import os
import ssl

from pilotfish.catalog.backends.http import client_tls
from pilotfish.catalog.model import InvalidField
from pilotfish.config import ConfigError, env, parse_hostport, read_token
from pilotfish.mesh.ca import DEFAULT_CERT_TTL, MAX_CERT_TTL, CertificateAuthority, cert_ttl
from pilotfish.mesh.identity import DEFAULT_TRUST_DOMAIN, trust_domain
from pilotfish.mesh.node import MeshSettings
from pilotfish.mesh.outbound import Upstream


def _ttl_flag(flag: str) -> type[int]:
    def parse(value: str) -> int:
        """Seconds, within the certificate life the CA allows."""
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


def add_sidecar_flags(parser: argparse.ArgumentParser) -> None:
    """The sidecar's mesh: an inbound port, upstreams, and where certificates come from."""
    group = parser.add_argument_group("service mesh: mutual TLS between sidecars "
                                      "(see docs/mtls.md)")
    group.add_argument("--mesh-inbound", default=env("mesh_inbound"), metavar="HOST:PORT",
                       help="this host's one TLS port for its mesh services (containers "
                            "labelled SERVICE_MTLS=1 are registered there); turns the mesh "
                            "on [PILOTFISH_MESH_INBOUND]")
    group.add_argument("--mesh-issuer", default=env("mesh_issuer"), metavar="URL",
                       help="the registry API that signs certificates (default: --registry "
                            "when it is http(s)://, or on `up` with --mesh-ca-cert this "
                            "process's --api); --token-file is the token it is asked with "
                            "[PILOTFISH_MESH_ISSUER]")
    group.add_argument("--mesh-upstream", action="append", metavar="LISTEN=SERVICE?as=SOURCE",
                       default=[u for u in (env("mesh_upstream") or "").split() if u],
                       help="a plain listener for apps on this host whose connections reach "
                            "SERVICE over mutual TLS, speaking as SOURCE; repeatable "
                            "(e.g. 127.0.0.1:9000=db?as=web) [PILOTFISH_MESH_UPSTREAM, "
                            "space-separated]")
    group.add_argument("--mesh-cert-ttl", type=_ttl_flag("--mesh-cert-ttl"),
                       default=env("mesh_cert_ttl"), metavar="SECONDS",
                       help="the life asked for each certificate (default: the CA's "
                            "--mesh-max-cert-ttl); renewed at two thirds of it "
                            "[PILOTFISH_MESH_CERT_TTL]")
    group.add_argument("--mesh-close-denied", action="store_true",
                       default=env("mesh_close_denied", "") not in ("", "0"),
                       help="when the intentions change, also close open connections they "
                            "now deny (default: only new connections are refused) "
                            "[PILOTFISH_MESH_CLOSE_DENIED]")
    if "--trust-domain" not in parser._option_string_actions:  # `up` has it from the CA's
        add_trust_domain_flag(group)


def _default_issuer(args: argparse.Namespace) -> str | None:
    """An http(s):// --registry, or this process's own API when it holds the CA (`up`)."""
    if str(args.registry).startswith(("http://", "https://")):
        return str(args.registry)
    api = getattr(args, "api", None)
    if getattr(args, "mesh_ca_cert", None) and api not in (None, "", "off"):
        listen = parse_hostport(api, "--api")
        host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else \
            "[::1]" if listen.host == "::" else str(listen).rpartition(":")[0]
        scheme = "https" if getattr(args, "tls_cert", None) else "http"
        return f"{scheme}://{host}:{listen.port}"
    return None


def mesh_settings(args: argparse.Namespace, advertise_ip: str) -> MeshSettings | None:
    """The mesh the flags ask for on this sidecar, or None (--mesh-inbound not given)."""
    if not args.mesh_inbound:
        if args.mesh_upstream:
            raise ConfigError("--mesh-upstream needs --mesh-inbound: the mesh is off without it")
        return None
    inbound = parse_hostport(args.mesh_inbound, "--mesh-inbound", default_host="0.0.0.0")
    issuer = args.mesh_issuer or _default_issuer(args)
    if not issuer:
        raise ConfigError("--mesh-inbound needs --mesh-issuer URL (the registry API with "
                          "--mesh-ca-cert) unless --registry is an http(s):// API")
    try:
        domain = trust_domain(args.trust_domain, "--trust-domain")
    except InvalidField as exc:
        raise ConfigError(f"--trust-domain: {exc.message}") from None
    upstreams = tuple(Upstream.parse(text) for text in args.mesh_upstream)
    listens = [u.listen for u in upstreams]
    if len(set(listens)) != len(listens):
        raise ConfigError("--mesh-upstream: two upstreams on one listen address")
    verify: ssl.SSLContext | bool = True
    if issuer.startswith("https://"):
        verify = client_tls(args.ca_file, None, None)
    token = read_token(args.token_file) or os.environ.get("PILOTFISH_TOKEN") or None
    if token is None:
        raise ConfigError("--mesh-inbound needs a token the CA accepts (--token-file or "
                          "PILOTFISH_TOKEN), with write:<service> for every service it speaks "
                          "as")
    return MeshSettings(inbound, advertise_ip, issuer, token, domain, args.mesh_cert_ttl,
                        upstreams, args.mesh_close_denied, verify)
