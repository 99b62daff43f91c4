"""etcd settings, the members a URL names, and the small helpers every part uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import grpc
from aetcd import rpc

import pilotfish.catalog.backends.etcd.secure as secure
from pilotfish.catalog.backends.etcd.secure import Security, auth_off
from pilotfish.config import parse_endpoints

log = logging.getLogger(__name__.rpartition(".")[0])  # the package's logger

T = TypeVar("T")

DEFAULT_PORT = 2379
CALL_TIMEOUT = 1.5  # one attempt on one member
AUTH_TIMEOUT = 2.0  # one sign-in (a raft round and a bcrypt check on the server)
DEADLINE = 4.0  # one catalog call, across retries and members (the API gives up at 5 s)
STALE_GRACE = 1.0  # how long reads are served from the cache while the watch reconnects
PROGRESS_EVERY = 0.25  # a progress request on the watch stream this often...
STALL_AFTER = 1.0  # ...and a member that leaves one unanswered this long is frozen or cut off
MIN_KEEPALIVE_TIMEOUT = 0.3
REVOKE_LAPSED_AFTER = 2.0  # the registrar moves the instances to a new lease meanwhile
LAPSE_SLACK = 0.5  # an expiry key deleted this close before its time still counts as lapsed
OUTAGE_MEMORY = 32  # past outages remembered for the lapsed-lease check

GRPC_OPTIONS: dict[str, Any] = {
    # Notice a silently dead member; etcd refuses pings closer than 5 s apart.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 3_000,
    # Reconnect quickly when a member comes back (gRPC's default backoff reaches 120 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1_000,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
}
WATCH_METADATA = (("hasleader", "true"),)  # a member cut off from the leader ends the watch


@dataclass(slots=True)
class _Held:
    """A lease this catalog granted or renewed, and when it runs out by our own clock."""

    ttl: int
    expires: float  # time.monotonic()


class _Member:
    """One etcd endpoint: its gRPC channel (made lazily, reconnected by gRPC) and, when the
    catalog has a user, the token that goes with every call (see `secure`)."""

    def __init__(self, host: str, port: int, security: Security | None = None) -> None:
        self.endpoint = f"{host}:{port}"
        self.security = security or Security()
        self.metadata: tuple[tuple[str, str], ...] = ()  # ("token", …) once signed in
        self.authentications = 0  # sign-ins so far (the first, then one per lapsed token)
        self._auth_off = False  # etcd said authentication is not enabled: no token needed
        self._signing_in = asyncio.Lock()
        self._channel: Any = None
        self._stubs: dict[str, Any] = {}

    def _stub(self, kind: str) -> Any:
        if self._channel is None:
            options = list(GRPC_OPTIONS.items())
            if self.security.tls:
                self._channel = grpc.aio.secure_channel(
                    self.endpoint, self.security.channel_credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.endpoint, options=options)
            self._stubs = {"kv": rpc.KVStub(self._channel), "lease": rpc.LeaseStub(self._channel),
                           "watch": rpc.WatchStub(self._channel),
                           "auth": rpc.AuthStub(self._channel)}
        return self._stubs[kind]

    async def _ready(self, kind: str) -> Any:
        stub = self._stub(kind)
        if self.security.credentials is not None and not self.metadata and not self._auth_off:
            await self._sign_in()
        return stub

    async def _sign_in(self) -> None:
        async with self._signing_in:
            if self.metadata or self._auth_off:
                return  # another call signed in meanwhile
            assert self.security.credentials is not None
            user, password = self.security.credentials
            try:
                reply = await self._stub("auth").Authenticate(
                    rpc.AuthenticateRequest(name=user, password=password), timeout=AUTH_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if not auth_off(exc):
                    raise
                log.warning("etcd %s has authentication disabled: user %r is not needed there "
                            "(etcdctl auth enable turns it on)", self.endpoint, user)
                self._auth_off = True
                return
            self.metadata = (("token", reply.token),)
            self.authentications += 1
            if self.authentications > 1:
                log.info("etcd %s: signed in again as %r (the token lapsed)", self.endpoint, user)

    def token_rejected(self, used: tuple[tuple[str, str], ...], details: str) -> bool:
        """After a call made with `used` failed with `details`: if etcd refused the token and a
        new sign-in may help, forget the token (the next call signs in) and say True."""
        if self.security.credentials is None or not secure.token_rejected(details):
            return False
        if "user name is empty" in details:
            self._auth_off = False  # authentication was turned on since we signed in
        if not used or self.metadata == used:  # not already renewed by another call
            self.metadata = ()
        return True

    async def kv(self) -> Any:
        return await self._ready("kv")

    async def leases(self) -> Any:
        return await self._ready("lease")

    async def watches(self) -> Any:
        return await self._ready("watch")

    async def close(self) -> None:
        channel, self._channel, self._stubs = self._channel, None, {}
        self.metadata = ()
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


class _WatchEnded(Exception):
    """The server ended the watch (cancelled, lost its leader, or the stream closed)."""


class _Compacted(Exception):
    """The revision to resume from was compacted away: list everything again."""


def parse_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, list[str]]]:
    """Split etcd://h1:2379,h2:2379/prefix into endpoints, prefix and query options."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("etcd", *secure.TLS_SCHEMES):
        raise ValueError(f"registry URL {url!r}: expected etcd:// or etcds://")
    endpoints = [(f"[{e.host}]" if ":" in e.host else e.host, e.port)
                 for e in parse_endpoints(parts.netloc, DEFAULT_PORT, f"registry URL {url!r}")]
    prefix = parts.path.strip("/") or "pilotfish"
    if any(not segment for segment in prefix.split("/")):
        raise ValueError(f"registry URL {url!r}: empty segment in prefix {prefix!r}")
    return endpoints, prefix, parse_qs(parts.query)


def _lease_number(lease_id: str) -> int | None:
    """etcd's int64 id for a pilotfish lease id (hex), or None if it cannot be one."""
    try:
        number = int(lease_id, 16)
    except ValueError:
        return None
    return number if 0 < number < 2**63 else None


def keepalive_timeout(ttl: int, call_timeout: float) -> float:
    """One keepalive attempt's timeout: short enough that, a frozen member given up on, the
    next member renews the lease before it lapses (ttl/4; unknown ttl: the call timeout)."""
    if ttl <= 0:
        return call_timeout
    return max(MIN_KEEPALIVE_TIMEOUT, min(call_timeout, ttl / 4))


def _prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) cover every key starting with prefix."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _transient(exc: grpc.aio.AioRpcError) -> bool:
    """Worth another attempt on another member: unreachable, timed out, or a stream that
    broke in gRPC's core (INTERNAL "Internal error from Core", seen when a deadline hits
    while a request is being sent)."""
    return exc.code() in _TRANSIENT or (
        exc.code() == grpc.StatusCode.INTERNAL and "from Core" in (exc.details() or ""))


def _server_answered(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd itself answered (no leader, leader changed, timeout) vs no connection."""
    return (exc.details() or "").startswith("etcdserver:")


_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
