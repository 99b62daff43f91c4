"""TLS to ZooKeeper's secureClientPort: `zks://h1:2281,…/chroot`.

The server certificate is verified (chain and host name) with --ca-file / PILOTFISH_CA_FILE
besides the system's CAs (kazoo loads both); a client certificate, for servers with
`ssl.clientAuth=need`, comes from PILOTFISH_CLIENT_CERT / PILOTFISH_CLIENT_KEY. kazoo retries
a refused handshake forever, logging it, so before starting the session one handshake is
made here: a certificate refused either way is a ConfigError at start, saying what to fix.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilotfish.catalog.backends.credentials import ClientTls
from pilotfish.config import ConfigError, parse_endpoints

TLS_SCHEMES = frozenset({"zks"})
PREFLIGHT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class ZkTls(ClientTls):
    """The files a TLS session to ZooKeeper uses (all optional but the scheme)."""

    def kazoo_options(self) -> dict[str, Any]:
        """KazooClient's keyword arguments for this TLS: verify the chain and the host name."""
        return {"use_ssl": True, "ca": self.ca_file, "certfile": self.client_cert,
                "keyfile": self.client_key, "verify_certs": True, "check_hostname": True}

    def context(self) -> ssl.SSLContext:
        """The context kazoo will build (system CAs plus ca_file); ConfigError naming a file."""
        self.check_pair("zks://")
        context = ssl.create_default_context()
        for path, what in ((self.ca_file, "--ca-file"), (self.client_cert, "PILOTFISH_CLIENT_CERT"),
                           (self.client_key, "PILOTFISH_CLIENT_KEY")):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{what} {path}: no such file")
        try:
            if self.ca_file:
                context.load_verify_locations(self.ca_file)
            if self.client_cert:
                context.load_cert_chain(self.client_cert, self.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"zks:// certificates: {exc}") from None
        return context


def tls_from_url(url: str, ca_file: str | None = None) -> tuple[str, ZkTls | None]:
    """The URL as `zk://`, and the TLS settings when it was `zks://` (files from the flag or
    the environment)."""
    scheme, sep, rest = url.partition("://")
    if scheme.lower() not in TLS_SCHEMES:
        return url, None
    return "zk" + sep + rest, ZkTls.from_env(ca_file)


def preflight(hosts: list[str], tls: ZkTls) -> None:
    """One TLS handshake (and a `srvr`, which answers or hangs up) with the first server that
    takes a connection: a refused certificate raises ConfigError; an unreachable ensemble is
    left to the session, which keeps trying."""
    context = tls.context()
    for endpoint in parse_endpoints(",".join(hosts), 2181, "zks://"):
        try:
            raw = socket.create_connection((endpoint.host, endpoint.port), PREFLIGHT_TIMEOUT)
        except OSError:
            continue  # not reachable: the next server, or kazoo's retries
        try:
            conn = context.wrap_socket(raw, server_hostname=endpoint.host)
        except ssl.SSLError as exc:
            raise ConfigError(f"ZooKeeper {endpoint}: TLS: {_explain(exc, tls)}") from None
        except OSError:
            raw.close()
            continue
        try:
            conn.sendall(b"srvr")  # a refused client certificate (TLS 1.3) shows up here
            while conn.recv(4096):
                pass
        except ssl.SSLError as exc:
            if "EOF" not in (exc.reason or ""):  # a hang-up after the handshake is fine
                raise ConfigError(f"ZooKeeper {endpoint}: TLS: {_explain(exc, tls)}") from None
        except OSError:
            pass
        finally:
            conn.close()
        return


def _explain(exc: ssl.SSLError, tls: ZkTls) -> str:
    reason = exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"its certificate is not signed by {tls.trusted()}, or does not name the host "
                f"in the URL ({exc.verify_message})")
    if "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        if tls.client_cert is None:
            return (f"it requires a client certificate (ssl.clientAuth=need: {reason}); set "
                    "PILOTFISH_CLIENT_CERT and PILOTFISH_CLIENT_KEY")
        return (f"it did not accept the client certificate {tls.client_cert} ({reason}; is it "
                "signed by the server's ssl.trustStore?)")
    if "EOF" in reason or "WRONG_VERSION" in reason:
        return (f"the handshake failed ({reason}): is this ZooKeeper's secureClientPort? "
                "(zk:// is for the plain clientPort)")
    return reason
