"""Single resource records in wire form, encoded once so responses are joined bytes."""

from __future__ import annotations

import struct

from pilotfish.dns.names import encode, packed_address

# Record types pilotfish answers, and the classes it knows.
TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1
TYPE_NAMES = {TYPE_A: "A", TYPE_NS: "NS", TYPE_SOA: "SOA", TYPE_AAAA: "AAAA",
              TYPE_SRV: "SRV", TYPE_ANY: "ANY"}

# Points at the question name, which always starts right after the 12-octet header.
QUESTION_NAME = b"\xc0\x0c"

_RR_HEADER = struct.Struct("!HHIH")
_SOA_TIMES = struct.Struct("!IIIII")
_SRV_FIELDS = struct.Struct("!HHH")


def record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """One RR: owner (wire name or pointer), type, class IN, TTL, RDATA."""
    return owner + _RR_HEADER.pack(rtype, CLASS_IN, ttl, len(rdata)) + rdata


def address_record(owner: bytes, address: str | bytes, ttl: int) -> bytes:
    """An A or AAAA record, whichever the address (an IP literal, or packed) is."""
    packed = address if isinstance(address, bytes) else packed_address(address)
    return record(owner, TYPE_AAAA if len(packed) == 16 else TYPE_A, ttl, packed)


def srv_record(owner: bytes, priority: int, weight: int, port: int, target: bytes,
               ttl: int) -> bytes:
    """An SRV record; the target (a wire name) is never compressed (RFC 2782)."""
    return record(owner, TYPE_SRV, ttl, _SRV_FIELDS.pack(priority, weight, port) + target)


def soa_record(owner: bytes, apex: str, serial: int, minimum: int, ttl: int) -> bytes:
    """The zone's SOA; `minimum` is the negative-caching TTL (RFC 2308); names uncompressed."""
    rdata = (encode(f"ns.{apex}") + encode(f"hostmaster.{apex}")
             + _SOA_TIMES.pack(serial & 0xFFFFFFFF, 3600, 600, 86400, minimum))
    return record(owner, TYPE_SOA, ttl, rdata)


def ns_record(owner: bytes, apex: str, ttl: int) -> bytes:
    """The zone's single NS record, naming ns.<domain>."""
    return record(owner, TYPE_NS, ttl, encode(f"ns.{apex}"))


def opt_record(udp_size: int, do_bit: bool, extended_rcode: int = 0) -> bytes:
    """An EDNS0 OPT pseudo-record (RFC 6891) with no options; echoes the DO bit (RFC 3225).

    `extended_rcode` is the upper 8 bits of a 12-bit rcode (1 for BADVERS).
    """
    flags = (extended_rcode << 24) | (0x8000 if do_bit else 0)
    return b"\x00" + _RR_HEADER.pack(TYPE_OPT, udp_size, flags, 0)
