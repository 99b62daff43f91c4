"""Service identities: SPIFFE IDs (`spiffe://<trust domain>/service/<name>`) and the TLS server
name a client asks an inbound port for."""

from __future__ import annotations

import re

from pilotfish.catalog.model import InvalidField, service_name

DEFAULT_TRUST_DOMAIN = "pilotfish.mesh"
# A trust domain is a DNS name (RFC 1035 labels, lower case): it ends every server name too.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
TRUST_DOMAIN_PATTERN = rf"{_LABEL}(?:\.{_LABEL}){{0,8}}"
_TRUST_DOMAIN = re.compile(TRUST_DOMAIN_PATTERN)
MAX_TRUST_DOMAIN = 180  # leaves room for "<service>.svc." within a 253-character name
SERVER_NAME_INFIX = ".svc."


def trust_domain(value: object, field: str = "trust_domain") -> str:
    """A valid trust domain (a lower-case DNS name), or InvalidField."""
    if not isinstance(value, str) or len(value) > MAX_TRUST_DOMAIN \
            or not _TRUST_DOMAIN.fullmatch(value):
        raise InvalidField(field, f"{str(value)[:80]!r} is not a trust domain: a lower-case "
                                  f"DNS name of at most {MAX_TRUST_DOMAIN} characters")
    return value


def spiffe_id(domain: str, service: str) -> str:
    """The identity a service's certificates carry in their URI SAN."""
    return f"spiffe://{domain}/service/{service_name(service)}"


def service_of(uri: str, domain: str) -> str | None:
    """The service a SPIFFE ID names in this trust domain; None for any other URI."""
    prefix = f"spiffe://{domain}/service/"
    if not uri.startswith(prefix):
        return None
    try:
        name = service_name(uri[len(prefix):])
    except InvalidField:
        return None
    return name if uri[len(prefix):] == name else None


def server_name(service: str, domain: str) -> str:
    """The TLS server name (SNI) a client sends to reach `service` on an inbound port."""
    return f"{service_name(service)}{SERVER_NAME_INFIX}{domain}"


def service_for_server_name(name: str | None, domain: str) -> str | None:
    """The service a client's server name asks for (None: not one of ours)."""
    if not name:
        return None
    suffix = f"{SERVER_NAME_INFIX}{domain}"
    if not name.lower().endswith(suffix):
        return None
    try:
        return service_name(name[:-len(suffix)])
    except InvalidField:
        return None


def peer_services(peer_cert: dict[str, object] | None, domain: str) -> list[str]:
    """The services a verified peer certificate (ssl getpeercert()) speaks for: its SPIFFE
    URI SANs in our trust domain (a certificate from our CA carries exactly one)."""
    if not peer_cert:
        return []
    names = peer_cert.get("subjectAltName") or ()
    found = []
    for kind, value in names:  # type: ignore[attr-defined]
        if kind == "URI" and (service := service_of(value, domain)) is not None:
            found.append(service)
    return found
