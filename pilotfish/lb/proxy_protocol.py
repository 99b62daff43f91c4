"""PROXY protocol v1 and v2 headers, so backends still learn the client's address."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _address(sockaddr: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    return ipaddress.ip_address(sockaddr[0]), int(sockaddr[1])


def _same_family(source: Any, destination: Any) -> tuple[Any, int, Any, int]:
    src, sport = _address(source)
    dst, dport = _address(destination)
    if src.version != dst.version:  # e.g. a v4-mapped client on a dual-stack listener
        if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped:
            src = src.ipv4_mapped
        if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped:
            dst = dst.ipv4_mapped
    return src, sport, dst, dport


def header(version: str, source: Any, destination: Any) -> bytes:
    """The header for a client `source` that connected to `destination` (socket addresses)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    src, sport, dst, dport = _same_family(source, destination)
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_SIGNATURE + b"\x20\x00\x00\x00"
    if version == "v1":
        name = "TCP4" if src.version == 4 else "TCP6"
        return f"PROXY {name} {src} {dst} {sport} {dport}\r\n".encode()
    body = bytes(src.packed) + bytes(dst.packed) + struct.pack("!HH", sport, dport)
    family = 0x11 if src.version == 4 else 0x21  # AF_INET/AF_INET6 + STREAM
    prefix: bytes = V2_SIGNATURE + bytes((0x21, family))
    return prefix + struct.pack("!H", len(body)) + body
