"""Backend credentials from a registry URL's user info, the environment or a file; never shown.

`etcd://user:password@h1:2379/prefix`, `zk://user:password@h1:2181/chroot`. The password may
instead come from PILOTFISH_BACKEND_PASSWORD or a file named by PILOTFISH_BACKEND_PASSWORD_FILE
(the URL then holds only `user@`), so it need not appear on a command line.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from pilotfish.config import ConfigError, read_token


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
