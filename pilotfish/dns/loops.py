"""Forwarding loops: an upstream that is our own listener, and a query that comes back.

Two checks, one at start and one per forwarded query:

- `refuse_own_listener`: a `--dns-forward` address that reaches our own listener (the same
  address, or any address of this host when we listen on 0.0.0.0 or ::) is a ConfigError.
- `InFlight`: a loop through other servers (we forward to B, B forwards back to us) shows
  up as the very question we are waiting on upstream arriving again from an upstream's
  address. It is answered SERVFAIL instead of being forwarded again, so one query costs one
  forward per server instead of filling every forward slot. This needs nothing from the
  servers in between (every forwarder and resolver keeps the question, where an EDNS hop
  marker is dropped by every resolver that asks anew) and leaves the query unchanged. With
  `--workers N` each worker knows only its own questions in flight: a question that comes
  back to another worker is forwarded once more, and the first worker to see it twice cuts
  it, so it costs at most N + 1 forwards per server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from pilotfish.config import ConfigError, HostPort
from pilotfish.dns.names import BadName, skip_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_addresses(host: str) -> set[IPAddress]:
    """The IP addresses a host name or literal stands for (empty when it does not resolve)."""
    with contextlib.suppress(ValueError):
        return {_plain(ipaddress.ip_address(host.split("%", 1)[0]))}
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return set()
    return {_plain(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in found}


def is_local(address: IPAddress) -> bool:
    """Whether the address is this host's: loopback, or one a socket can bind to."""
    if address.is_loopback:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def reaches(listen: IPAddress, upstream: IPAddress) -> bool:
    """Whether a packet sent to `upstream` arrives at a socket bound to `listen` (same port)."""
    if upstream == listen:
        return True
    if listen.is_unspecified:
        # A UDP socket on :: also takes IPv4 (dual stack), so it is reached over both.
        return (listen.version == 6 or upstream.version == 4) and is_local(upstream)
    return False


def refuse_own_listener(listen: HostPort, upstreams: Iterable[HostPort]) -> None:
    """ConfigError when a --dns-forward upstream is unusable or is our own listener."""
    listening = host_addresses(listen.host)
    for upstream in upstreams:
        targets = host_addresses(upstream.host)
        if upstream.port == 0 or any(address.is_unspecified for address in targets):
            raise ConfigError(f"--dns-forward: {upstream} is not an upstream resolver's address")
        if listen.port == upstream.port and any(
                reaches(mine, target) for mine in listening for target in targets):
            raise ConfigError(
                f"--dns-forward: {upstream} is this server's own listener (--dns {listen}): "
                "every out-of-zone query would be forwarded to itself")


def question_key(query: bytes) -> bytes | None:
    """The question as (lower-cased name, type, class) octets; None when unreadable."""
    try:
        end = skip_name(query, 12)
    except BadName:
        return None
    if end + 4 > len(query):
        return None
    return query[12:end].lower() + query[end:end + 4]


class InFlight:
    """The questions being relayed upstream, to recognise one coming back from an upstream."""

    def __init__(self, upstreams: Iterable[HostPort]) -> None:
        self.sources = frozenset(address for upstream in upstreams
                                 for address in host_addresses(upstream.host))
        self.counts: dict[bytes, int] = {}

    def loops_back(self, key: bytes, peer: Any) -> bool:
        """Whether this question is already in flight and now arrives from an upstream."""
        if key not in self.counts:
            return False
        try:
            source = _plain(ipaddress.ip_address(str(peer[0]).split("%", 1)[0]))
        except (TypeError, IndexError, ValueError):
            return False
        return source in self.sources

    def enter(self, key: bytes) -> None:
        """A query with this question goes upstream."""
        self.counts[key] = self.counts.get(key, 0) + 1

    def leave(self, key: bytes) -> None:
        """A query with this question came back (answered, failed or cancelled)."""
        left = self.counts.pop(key) - 1
        if left:
            self.counts[key] = left
