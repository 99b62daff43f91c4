"""Backend credentials from a registry URL's user info, the environment or a file; never shown;
and the files a TLS client trusts and presents.

`etcd://user:password@h1:2379/prefix`, `zk://user:password@h1:2181/chroot`. The password may
instead come from PILOTFISH_BACKEND_PASSWORD or a file named by PILOTFISH_BACKEND_PASSWORD_FILE
(the URL then holds only `user@`), so it need not appear on a command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Self
from urllib.parse import unquote, urlsplit

from pilotfish.config import ConfigError, read_token


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What a TLS client of the API or a backend trusts and presents, for https://, etcds://
    and zks:// alike: --ca-file (else PILOTFISH_CA_FILE, else the system's CAs) and a client
    certificate from PILOTFISH_CLIENT_CERT / PILOTFISH_CLIENT_KEY."""

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    @classmethod
    def from_env(cls, ca_file: str | None = None) -> Self:
        """The flag's CA file, else the environment's; the client certificate from the
        environment."""
        return cls(ca_file or os.environ.get("PILOTFISH_CA_FILE") or None,
                   os.environ.get("PILOTFISH_CLIENT_CERT") or None,
                   os.environ.get("PILOTFISH_CLIENT_KEY") or None)

    def check_pair(self, scheme: str) -> None:
        """A certificate without its key (or the reverse) is a ConfigError naming both."""
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError(f"{scheme}: a client certificate needs both "
                              "PILOTFISH_CLIENT_CERT and PILOTFISH_CLIENT_KEY")

    def trusted(self) -> str:
        """Where a server's certificate must chain to, as refusals name it."""
        if self.ca_file:
            return f"the CA of --ca-file {self.ca_file} (or PILOTFISH_CA_FILE)"
        return "a CA this system trusts (give one with --ca-file)"


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and (user, password) when it named a user."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, colon, password = userinfo.partition(":")
    if not colon:
        password_file = os.environ.get("PILOTFISH_BACKEND_PASSWORD_FILE")
        if password_file:
            try:
                password = read_token(password_file) or ""
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("--token-file",
                                                   "PILOTFISH_BACKEND_PASSWORD_FILE")) from None
        else:
            password = os.environ.get("PILOTFISH_BACKEND_PASSWORD", "")
    if not user or not password:
        raise ConfigError("registry URL: a backend user needs a password (user:password@ in "
                          "the URL, PILOTFISH_BACKEND_PASSWORD or PILOTFISH_BACKEND_PASSWORD_FILE)")
    return parts._replace(netloc=hosts).geturl(), (unquote(user), unquote(password))
