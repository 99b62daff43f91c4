"""The names pilotfish answers for, and their wire form.

Under a domain D (default `pilotfish`):

- `<service>.service.D`          A/AAAA/SRV of the serving instances
- `<tag>.<service>.service.D`    the same, only instances with that tag
- `_<service>._tcp.service.D`    SRV (RFC 2782; `_udp` likewise; `_<tag>` filters by tag)
- `<hex>.addr.D`                 A/AAAA of an address (8 hex digits for IPv4, 32 for IPv6)
- `<port>.<hex>.addr.D`          the same address: the target of the SRV record of an
                                 instance on that port, so instances sharing a host have
                                 distinct targets (HAProxy refuses one target twice)
- `D`                            SOA and NS; `ns.D` is the name server

Every name above them that has descendants (`service.D`, `_tcp.service.D`, `addr.D`, ...)
exists as an empty non-terminal: NOERROR without records. Anything else is NXDOMAIN.
"""

from __future__ import annotations

import re
import socket

from pilotfish.config import ConfigError

MAX_NAME = 255  # wire octets, RFC 1035 2.3.4
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")  # matched whole


class BadName(ValueError):
    """A question name that cannot be read from the packet (the query is malformed)."""


def domain_name(value: str) -> str:
    """The canonical form (lower case, no trailing dot) of a --domain value, or ConfigError."""
    name = value.strip().lower().rstrip(".")
    labels = name.split(".") if name else []
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"--domain: {value!r} is not a domain name like pilotfish or sd.local")
    if len(encode(name)) > MAX_NAME - 80:  # leave room for service, tag and addr labels
        raise ConfigError(f"--domain: {value!r} is too long")
    return name


def tag_label(tag: str) -> str | None:
    """The DNS label a tag is reachable under (lower-cased), or None when it cannot be one."""
    label = tag.lower()
    return label if _LABEL.fullmatch(label) else None


def encode(name: str) -> bytes:
    """The uncompressed wire form of a dotted name (lower-cased), ending with the root label."""
    out = bytearray()
    for label in name.lower().split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def packed_address(address: str) -> bytes:
    """The 4 or 16 octets of an IP literal (inet_pton: far cheaper than ipaddress)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def addr_label(address: str) -> str:
    """The label of an address's name: its octets in hex, 7f000001 for 127.0.0.1."""
    return packed_address(address).hex()


def read_name(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """Read the uncompressed name at offset: its labels (as sent) and the offset after it.

    A question has nothing before it to point back to, so compression is refused here.
    """
    labels: list[bytes] = []
    total = 1
    end = len(data)
    while True:
        if offset >= end:
            raise BadName("name runs past the end of the packet")
        length = data[offset]
        offset += 1
        if length == 0:
            return labels, offset
        if length > 63:
            raise BadName("compressed or extended label in the question")
        total += length + 1
        if total > MAX_NAME or offset + length > end:
            raise BadName("name too long")
        labels.append(data[offset:offset + length])
        offset += length


def wire(labels: list[bytes]) -> bytes:
    """The wire form of labels read by read_name."""
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def skip_name(data: bytes, offset: int) -> int:
    """The offset after a name in a record (which may end in a compression pointer)."""
    end = len(data)
    while True:
        if offset >= end:
            raise BadName("name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            if offset + 2 > end:
                raise BadName("pointer runs past the end of the packet")
            return offset + 2
        if length > 63:
            raise BadName("extended label")
        offset += length + 1
