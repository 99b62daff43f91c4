"""Who may do what on the registry API and the LB's routes API: named tokens with scopes.

The tokens come from a TOML file (`--acl`, `--lb-acl`) or one admin token file.

Scopes: `read` (every GET), `write:GLOB` (instances of services matching the glob, and
creating leases), `admin` (everything, including other tokens' leases). Secrets are kept
only as SHA-256 digests and compared in constant time; names, never secrets, appear in
answers and logs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from pilotfish.config import ConfigError
from pilotfish.http.errors import ApiError

log = logging.getLogger(__name__)

READ = "read"
ADMIN = "admin"
WRITE = "write:"
ANY_WRITE = "write:<any service>"
TOKEN_FILE_NAME = "token-file"
_GLOB = re.compile(r"[a-z0-9*?\[\]!-]{1,63}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")


def digest(secret: str) -> bytes:
    """The SHA-256 of a secret: what an ACL keeps and compares."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Token:
    """One named token: the digest of its secret and what it may do."""

    name: str
    secret_digest: bytes = field(repr=False)
    scopes: tuple[str, ...]

    @property
    def admin(self) -> bool:
        """Admin may do everything, on every lease."""
        return ADMIN in self.scopes

    def can_read(self) -> bool:
        """Whether GETs are allowed."""
        return self.admin or READ in self.scopes

    def can_write(self, service: str) -> bool:
        """Whether instances of `service` may be registered, updated and deregistered."""
        return self.admin or any(
            fnmatch.fnmatchcase(service, scope[len(WRITE):])
            for scope in self.scopes if scope.startswith(WRITE))

    def can_write_any(self) -> bool:
        """Whether the token may write at all (and so create leases)."""
        return self.admin or any(scope.startswith(WRITE) for scope in self.scopes)


@dataclass(frozen=True, slots=True)
class Acl:
    """The tokens in force and whether reads without a token are allowed."""

    tokens: tuple[Token, ...]
    default_read: bool = True

    def identify(self, secret: str) -> Token | None:
        """The token whose secret this is, comparing against every token in constant time."""
        given = digest(secret)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret_digest):
                found = token
        return found

    def with_token_file(self, secret: str | None) -> Acl:
        """This ACL plus the --token-file secret as one admin token named 'token-file'."""
        if secret is None:
            return self
        admin = Token(TOKEN_FILE_NAME, digest(secret), (ADMIN,))
        return Acl((*self.tokens, admin), self.default_read)


def admin_token(secret: str) -> Acl:
    """What --token-file alone means: one admin token, reads open to everyone."""
    return Acl((), True).with_token_file(secret)


def load_acl(path: str) -> Acl:
    """Read and check an ACL file; every mistake is a ConfigError naming the entry and key."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--acl: cannot read {path!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--acl {path}: not valid TOML: {exc}") from exc
    return parse_acl(data, f"--acl {path}")


def parse_acl(data: dict[str, Any], where: str = "--acl") -> Acl:
    """Build an Acl from parsed TOML (see load_acl)."""
    unknown = sorted(set(data) - {"default_read", "token"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          "(known: default_read, token)")
    default_read = data.get("default_read", True)
    if not isinstance(default_read, bool):
        raise ConfigError(f"{where}: default_read must be true or false")
    entries = data.get("token", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: token must be an array of tables ([[token]])")
    tokens: list[Token] = []
    for number, entry in enumerate(entries, 1):
        tokens.append(_token(entry, f"{where}: token #{number}"))
    names = [t.name for t in tokens]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: token name(s) used twice: {', '.join(duplicates)}")
    digests = [t.secret_digest for t in tokens]
    if len(set(digests)) != len(digests):
        raise ConfigError(f"{where}: two tokens have the same secret")
    return Acl(tuple(tokens), default_read)


def _token(entry: object, where: str) -> Token:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = sorted(set(entry) - {"name", "secret", "secret_sha256", "scopes"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          "(known: name, secret, secret_sha256, scopes)")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must be 1-64 of [A-Za-z0-9_.:@-]")
    where = f"{where} ({name})"
    secret, hashed = entry.get("secret"), entry.get("secret_sha256")
    if (secret is None) == (hashed is None):
        raise ConfigError(f"{where}: give exactly one of secret or secret_sha256")
    if secret is not None:
        if not isinstance(secret, str) or len(secret) < 8 or not secret.isprintable():
            raise ConfigError(f"{where}: secret must be at least 8 printable characters")
        secret_digest = digest(secret)
    else:
        if not isinstance(hashed, str) or not _HEX.fullmatch(hashed.lower()):
            raise ConfigError(f"{where}: secret_sha256 must be 64 hex digits "
                              "(sha256sum of the secret, without a newline)")
        secret_digest = bytes.fromhex(hashed)
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or not scopes:
        raise ConfigError(f"{where}: scopes must be a non-empty list")
    for scope in scopes:
        if not isinstance(scope, str) or not _valid_scope(scope):
            raise ConfigError(f"{where}: unknown scope {scope!r} (known: read, admin, "
                              "write:GLOB with a service-name glob such as write:web-*)")
    return Token(name, secret_digest, tuple(scopes))


def _valid_scope(scope: str) -> bool:
    if scope in (READ, ADMIN):
        return True
    return scope.startswith(WRITE) and bool(_GLOB.fullmatch(scope[len(WRITE):]))


class Denied(ApiError):
    """A request the ACL refuses: 401 (no or unknown token) or 403 (a scope is missing)."""

    def __init__(self, status: int, message: str, token: str | None = None,
                 scope: str | None = None) -> None:
        super().__init__(status, "unauthorized" if status == 401 else "forbidden", message)
        self.token, self.scope = token, scope
        self.headers["WWW-Authenticate"] = self.challenge()

    def challenge(self) -> str:
        """The `WWW-Authenticate` value (RFC 6750): why the token was not enough."""
        if self.status == 403 and self.scope is not None:
            return f'Bearer error="insufficient_scope", scope="{self.scope}"'
        if self.status == 401 and self.message == "unknown token":
            return 'Bearer error="invalid_token"'
        return "Bearer"

    def body(self) -> dict[str, str]:
        """The JSON error answer: the message, the code, and the token's name and scope."""
        body = super().body()
        if self.token is not None:
            body["token"] = self.token
        if self.scope is not None:
            body["scope"] = self.scope
        return body


def forbidden(token: Token, scope: str, what: str) -> Denied:
    """403 naming the token and the scope it lacks."""
    return Denied(403, f"token {token.name!r} lacks scope {scope!r} ({what})", token.name, scope)


class AccessPolicy:
    """The ACL in force for one API; `reload()` (SIGHUP) re-reads its file."""

    def __init__(self, path: str | None = None, token_secret: str | None = None) -> None:
        self.path = path
        self._token_secret = token_secret
        self.acl: Acl | None = self._read()

    def _read(self) -> Acl | None:
        if self.path is not None:
            return load_acl(self.path).with_token_file(self._token_secret)
        if self._token_secret is not None:
            return admin_token(self._token_secret)
        return None

    @property
    def enabled(self) -> bool:
        """Whether any token is configured at all (else the API is open, as before)."""
        return self.acl is not None

    def reload(self) -> bool:
        """Re-read the ACL file; on a mistake keep the old ACL and log why (never a secret)."""
        if self.path is None:
            return False
        try:
            acl = self._read()
        except ConfigError as exc:
            log.error("ACL not reloaded, the previous one stays in force: %s", exc)
            return False
        self.acl = acl
        count = len(acl.tokens) if acl is not None else 0
        log.info("ACL reloaded from %s: %d token(s), default_read=%s", self.path, count,
                 acl.default_read if acl is not None else True)
        return True

    def authenticate(self, secret: str | None, write: bool,
                     needs_read: bool = True) -> Token | None:
        """The caller's token; Denied(401) when it is unknown or needed and missing, 403 for a
        read (`needs_read`) by a token without scope read.

        None means "anonymous and allowed" (an open API, or a read with default_read).
        """
        acl = self.acl
        if acl is None:
            return None
        if secret:
            token = acl.identify(secret)
            if token is None:
                raise Denied(401, "unknown token")
            if not write and needs_read and not token.can_read():
                raise forbidden(token, READ, "reads")
            return token
        if write:
            raise Denied(401, "writes need a token: Authorization: Bearer <token>")
        if not acl.default_read:
            raise Denied(401, "reads need a token here (default_read is off): "
                              "Authorization: Bearer <token>")
        return None


def reads_catalog(scope: Mapping[str, Any], access: AccessPolicy | None) -> bool:
    """Whether this request may see what the catalog holds (instance ids and addresses), as
    GET /v1/services would let it: every /metrics asks this before showing per-instance series.

    A token with scope read (or admin) may; anyone where reads are open may. /metrics stays
    open, so an unknown token is no token here (never a 401 for a scraper's stale secret).
    """
    acl = access.acl if access is not None else None
    if acl is None:
        return True
    secret = presented_token(scope)
    token = acl.identify(secret) if secret else None
    return token.can_read() if token is not None else acl.default_read


def presented_token(scope: Mapping[str, Any]) -> str | None:
    """The secret a request presents: `Authorization: Bearer`, `X-Consul-Token` or `?token=`."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    consul = headers.get(b"x-consul-token", b"").decode("latin-1").strip()
    if consul:
        return consul
    query: bytes = scope.get("query_string", b"")
    for pair in query.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key == "token" and value:
            return unquote_plus(value)
    return None
