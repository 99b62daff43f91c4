"""Reaching a secured etcd: a user and password (a token on every call), TLS, and what to say
when etcd refuses us.

`etcd://user:password@h1:2379/prefix` signs in with etcd's Authenticate call; the token it
returns goes as `token` metadata on every call. etcd's simple tokens lapse after
`--auth-token-ttl` seconds without use (and all of them when a member restarts): a call
refused with "invalid auth token" forgets the token, and the next call signs in again.
`etcds://…` speaks TLS, verified with --ca-file / PILOTFISH_CA_FILE (else the system's CAs),
with a client certificate from PILOTFISH_CLIENT_CERT / PILOTFISH_CLIENT_KEY when etcd
requires one (`--client-cert-auth`). The password and the token are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from pilotfish.catalog.backends.credentials import ClientTls, split_credentials
from pilotfish.config import ConfigError

TLS_SCHEMES = frozenset({"etcds"})
TOKEN_REJECTED = ("invalid auth token", "user name is empty")
AUTH_OFF = "authentication is not enabled"


@dataclass(frozen=True, slots=True)
class Security(ClientTls):
    """How this process proves itself to etcd: a user, TLS (with ClientTls's files), or
    neither."""

    credentials: tuple[str, str] | None = None
    tls: bool = False

    @property
    def user(self) -> str | None:
        """The etcd user name, if any (never the password)."""
        return self.credentials[0] if self.credentials else None

    def channel_credentials(self) -> Any:
        """gRPC's TLS credentials for these files; a ConfigError naming the file otherwise."""
        self.check_pair("etcds://")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "--ca-file"),
            private_key=_read(self.client_key, "PILOTFISH_CLIENT_KEY"),
            certificate_chain=_read(self.client_cert, "PILOTFISH_CLIENT_CERT"))


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path}: not a PEM file")
    return data


def security_from_url(url: str, ca_file: str | None = None) -> tuple[str, Security]:
    """The URL without user info, as `etcd://`, and the security it (and the environment) asks
    for: a user from the URL (or PILOTFISH_BACKEND_PASSWORD[_FILE]), TLS for `etcds://`."""
    plain, credentials = split_credentials(url)
    scheme, sep, rest = plain.partition("://")
    tls = scheme.lower() in TLS_SCHEMES
    if not tls:
        return plain, Security(credentials=credentials)
    return "etcd" + sep + rest, replace(Security.from_env(ca_file), credentials=credentials,
                                        tls=True)


def token_rejected(details: str) -> bool:
    """etcd refused the call's token (lapsed, or lost in a restart) or wanted one: sign in."""
    return any(text in details for text in TOKEN_REJECTED)


def auth_off(exc: grpc.aio.AioRpcError) -> bool:
    """etcd answered Authenticate with "authentication is not enabled"."""
    return AUTH_OFF in (exc.details() or "")


def refusal(exc: grpc.aio.AioRpcError, security: Security, prefix: str) -> str | None:
    """Why etcd refuses us for good (credentials, permissions, TLS), or None when it may be
    worth another try: these are configuration errors, named so a person can fix them."""
    details = exc.details() or ""
    user = security.user
    if "authentication failed" in details:
        return (f"user {user!r} could not sign in: wrong user name or password "
                "(etcd: authentication failed)")
    if "user name is empty" in details and user is None:
        return ("etcd requires a user: give etcd://USER:PASSWORD@HOST:PORT/PREFIX, or "
                "etcd://USER@… with PILOTFISH_BACKEND_PASSWORD or PILOTFISH_BACKEND_PASSWORD_FILE")
    if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
        who = f"user {user!r}" if user else "this client"
        return (f"{who} may not read and write /{prefix}/ (etcd: permission denied): grant it "
                f"a role with readwrite on that prefix (etcdctl role grant-permission ROLE "
                f"--prefix=true readwrite /{prefix}/)")
    if not security.tls:
        return None
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (f"TLS: etcd's certificate is not signed by {security.trusted()}, or does not "
                "name the host in the URL (CERTIFICATE_VERIFY_FAILED)")
    if "TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details:
        if security.client_cert is None:
            return ("TLS: etcd hung up after the handshake: it requires a client certificate "
                    "(--client-cert-auth); set PILOTFISH_CLIENT_CERT and PILOTFISH_CLIENT_KEY")
        return (f"TLS: etcd did not accept the client certificate "
                f"{security.client_cert} (is it signed by etcd's --trusted-ca-file?)")
    return None


def hint(details: str, security: Security) -> str:
    """A suffix for errors that may come from speaking TLS to plain etcd or the reverse."""
    if security.tls and "Handshake read failed" in details:
        return " (TLS: is this etcd serving plain http://? then use etcd://)"
    if not security.tls and details.endswith("Socket closed"):
        return " (if this etcd serves https:// client URLs, use etcds://)"
    return ""
