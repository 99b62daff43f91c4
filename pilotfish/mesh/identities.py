"""The certificates a host holds, one per service, as TLS 1.3 contexts: a server context that
the inbound port switches to by the server name a client asks for, and a client context that
outbound routes present. Installing a new certificate replaces both contexts: handshakes from
then on use the new one, connections already open keep the one they were made with.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from pilotfish.mesh.identity import peer_services, service_for_server_name
from pilotfish.mesh.keys import load_identity


def _tls13(context: ssl.SSLContext, ca_pem: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem)
    return context


@dataclass(frozen=True, slots=True)
class Held:
    """One service's certificate as loaded: its contexts and when it ends."""

    service: str
    server: ssl.SSLContext
    client: ssl.SSLContext
    expires_at: float
    ca_pem: str


class Identities:
    """This host's service certificates, and the inbound port's context that picks among them."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.held: dict[str, Held] = {}
        self._by_context: dict[int, str] = {}  # id(server context) -> its service
        self.listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.listener.minimum_version = ssl.TLSVersion.TLSv1_3
        self.listener.verify_mode = ssl.CERT_REQUIRED  # kept when SNI switches the context
        self.listener.num_tickets = 1
        self.listener.sni_callback = self._pick
        self._ca_pem: str | None = None
        # One service's certificate is the listener's own: its handshakes need no switch
        # (switching copies the certificate settings into the connection: a tenth of a
        # resumed handshake's cost).
        self.default: str | None = None

    def install(self, service: str, certificate: str, key: ec.EllipticCurvePrivateKey,
                ca_pem: str, expires_at: float) -> None:
        """Use this certificate for `service` from the next handshake on (ssl.SSLError: the
        certificate and key do not match)."""
        server = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca_pem)
        server.num_tickets = 1
        load_identity(server, certificate, key)
        client = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_pem)
        client.check_hostname = False  # the identity is checked after the handshake
        load_identity(client, certificate, key)
        if self._ca_pem != ca_pem:
            self.listener.load_verify_locations(cadata=ca_pem)
            self._ca_pem = ca_pem
        if self.default in (None, service):
            load_identity(self.listener, certificate, key)
            self.default = service
            self._by_context[id(self.listener)] = service
        old = self.held.get(service)
        self.held[service] = Held(service, server, client, expires_at, ca_pem)
        self._by_context[id(server)] = service
        if old is not None:
            self._by_context.pop(id(old.server), None)

    def forget(self, service: str) -> None:
        """No longer serve or speak as `service`."""
        old = self.held.pop(service, None)
        if old is not None:
            self._by_context.pop(id(old.server), None)
        if service == self.default:  # its certificate stays loaded, but no name reaches it
            self.default = None
            self._by_context.pop(id(self.listener), None)

    def client_context(self, service: str) -> ssl.SSLContext | None:
        """The context outbound connections speaking as `service` present."""
        held = self.held.get(service)
        return None if held is None else held.client

    def served(self, tls: Any) -> str | None:
        """The service an inbound handshake reached (by the context it switched to)."""
        return self._by_context.get(id(tls.context))

    def peer(self, tls: Any) -> str | None:
        """The service a verified peer speaks for; None without exactly one identity of ours."""
        found = peer_services(tls.getpeercert(), self.domain)
        return found[0] if len(found) == 1 else None

    def _pick(self, sock: Any, name: str | None, _: ssl.SSLContext) -> int | None:
        service = service_for_server_name(name, self.domain)
        held = self.held.get(service) if service is not None else None
        if held is None:
            return int(ssl.AlertDescription.ALERT_DESCRIPTION_UNRECOGNIZED_NAME)
        if service != self.default:
            sock.context = held.server
        return None
