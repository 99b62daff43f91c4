"""Who the DNS server answers how: forwarding only for allowed networks, and a per-client
response-rate limit (BIND RRL's "slip": over the limit, an empty truncated answer)."""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterable
from typing import Any

from pilotfish.config import ConfigError
from pilotfish.dns.names import BadName, read_name

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_FORWARD_ALLOW = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                         "192.168.0.0/16", "fc00::/7", "169.254.0.0/16", "fe80::/10")
"""Loopback, RFC 1918, IPv6 unique local and link-local: forwarding never for the world."""

_COUNTS = struct.Struct("!HHHH")
MAX_CLIENTS = 65_536  # rate-limit buckets kept; beyond, the idle ones are dropped


def parse_networks(text: str, flag: str) -> tuple[Network, ...]:
    """A comma-separated list of networks (`10.0.0.0/8,fd00::/8`; a bare address is a /32)."""
    networks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{flag}: {item!r} is not a network like 10.0.0.0/8 or "
                              "fd00::/8") from None
    return tuple(networks)


class ForwardAllow:
    """Whether a client (an address tuple from recvfrom / peername) may have queries relayed."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._seen: dict[str, bool] = {}

    def __call__(self, client: Any) -> bool:
        if not isinstance(client, tuple) or not client:
            return False
        host = str(client[0])
        allowed = self._seen.get(host)
        if allowed is None:
            allowed = self._check(host)
            if len(self._seen) >= MAX_CLIENTS:
                self._seen.clear()
            self._seen[host] = allowed
        return allowed

    def _check(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address.version == net.version and address in net for net in self.networks)


def parse_rate(text: str, flag: str) -> float:
    """`N/s` (or `N`): responses per second per client, 1 to 1,000,000."""
    number = text.strip().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        rate = 0.0
    if not number.replace(".", "", 1).isdigit() or not 1 <= rate <= 1_000_000:
        raise ConfigError(f"{flag}: {text!r} is not a rate like 20/s (1 to 1000000 per second)")
    return rate


class RateLimit:
    """A token bucket per client address: `rate` responses a second, a second's worth of burst.

    Over the limit a response is not sent as is but "slipped" (BIND RRL, slip 1): an empty
    answer with TC set, so a real client retries over TCP (which is not limited: it cannot
    be spoofed) while a spoofed victim gets only a small packet: no amplification.
    """

    def __init__(self, rate: float, clock: Any = time.monotonic, burst: float = 0.0) -> None:
        self.rate = rate
        self.burst = max(burst or rate, 1.0)
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        self.slipped = 0

    def allow(self, client: Any) -> bool:
        """Take one response from the client's bucket; False when it is empty."""
        host = str(client[0]) if isinstance(client, tuple) and client else str(client)
        now = self.clock()
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                self._prune(now)
            bucket = self._buckets[host] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        self.slipped += 1
        return False

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled (they lose nothing); else the oldest half."""
        full = [h for h, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for host in full:
            del self._buckets[host]
        if len(self._buckets) >= MAX_CLIENTS:
            for host in list(self._buckets)[:MAX_CLIENTS // 2]:
                del self._buckets[host]


def slip(response: bytes) -> bytes:
    """The response cut to its header and question, with TC set (an empty truncated answer)."""
    if len(response) < 12:
        return response
    qdcount = _COUNTS.unpack_from(response, 4)[0]
    question = b""
    if qdcount == 1:
        try:
            _, end = read_name(response, 12)
            question = response[12:end + 4] if end + 4 <= len(response) else b""
        except BadName:
            qdcount = 0
    else:
        qdcount = 0
    return (response[:2] + bytes((response[2] | 0x02, response[3]))
            + _COUNTS.pack(qdcount if question else 0, 0, 0, 0) + question)
