"""Turns one query packet into one response packet: a dict lookup first, a full parse after."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Hashable
from random import random
from typing import Final

from pilotfish.dns.answers import BADVERS, FORMERR, NOTIMP, RCODE_NAMES, REFUSED, flag_table
from pilotfish.dns.names import BadName, read_name, skip_name
from pilotfish.dns.records import CLASS_IN, TYPE_OPT, opt_record
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, type_name

DEFAULT_UDP_SIZE = 1232  # the DNS flag day 2020 size: no IP fragmentation on common paths
TCP_LIMIT = 65535
MAX_UDP_QUERY = 4096  # a bigger UDP query is malformed here (FORMERR); no query needs that much
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT=1, ANCOUNT=0, NSCOUNT=0
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_HEAD = b"\x00\x00\x29"  # root owner name, type OPT
_COUNTS = struct.Struct("!HHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_TRANSFERS = frozenset({251, 252})  # IXFR, AXFR: the zone is not transferred
_RR_TAIL = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_OPTION = struct.Struct("!HH")


class Malformed(ValueError):
    """A query that cannot be read as DNS (FORMERR)."""


def options_fit(data: bytes, start: int, end: int) -> bool:
    """Whether EDNS options (code, length, value) exactly fill data[start:end] (RFC 6891)."""
    while start < end:
        if start + 4 > end:
            return False
        start += 4 + (data[start + 2] << 8 | data[start + 3])
    return start == end


def additional_records(data: bytes, offset: int, count: int) -> list[tuple[bool, int, int, int]]:
    """Walk the additional section: (root owner, type, class field, TTL field) per record.

    Raises Malformed when a record runs past the packet or an OPT's options overrun it.
    """
    records = []
    for _ in range(count):
        start = offset
        try:
            offset = skip_name(data, offset) + 10
        except BadName as exc:
            raise Malformed(str(exc)) from None
        if offset > len(data):
            raise Malformed("record runs past the end of the packet")
        rtype, rclass, ttl, rdlength = _RR_TAIL.unpack_from(data, offset - 10)
        rdata, offset = offset, offset + rdlength
        if offset > len(data):
            raise Malformed("record data runs past the end of the packet")
        if rtype == TYPE_OPT and not options_fit(data, rdata, offset):
            raise Malformed("EDNS option runs past its record")
        records.append((data[start] == 0, rtype, rclass, ttl))
    return records


class Forward:
    """Returned instead of a response when the query goes to an upstream resolver."""


FORWARD: Final = Forward()


class Responder:
    """Answers queries from the zone's pre-encoded table; never raises on bad input.

    The hot path reads only the header, finds the question's end, and looks the lower-cased
    question up. Anything else (EDNS versions, odd counts, NODATA for rare types, names out
    of zone, malformed packets) goes through a full parse.
    """

    def __init__(self, zone: Zone, stats: DnsStats, udp_size: int = DEFAULT_UDP_SIZE,
                 forwarding: bool = False,
                 forward_allow: Callable[[Hashable | None], bool] | None = None) -> None:
        self.zone = zone
        self.forward_allow = forward_allow  # None: every client (tests); else only these
        self.stats = stats
        self.udp_size = udp_size
        self.forwarding = forwarding
        self._opt = (opt_record(udp_size, False), opt_record(udp_size, True))
        self._bare_flags = {rcode: flag_table(rcode, False, forwarding)
                            for rcode in (FORMERR, NOTIMP, REFUSED, 0)}

    def answer(self, data: bytes, tcp: bool = False,
               client: Hashable | None = None) -> bytes | Forward | None:
        """The response to a query, FORWARD, or None to drop it.

        `client` (address and port) picks which records a partial answer carries.
        """
        if len(data) >= 17 and not data[2] & 0xF8 and data[4:10] == _ONE_QUESTION:
            # Lower-casing the type and class octets too is safe: no table key has a type or
            # class octet in a-z, and A-Z only ever maps onto a-z.
            end = data.find(0, 12) + 5
            answer = self.zone.table.get(data[12:end].lower())
            if answer is not None:
                size = len(data)
                additional = data[10:12]
                if additional == _NO_ADDITIONAL and size == end:
                    opt = b""
                    limit = TCP_LIMIT if tcp else 512
                elif (additional == _ONE_ADDITIONAL and size >= end + 11
                      and data[end:end + 3] == _OPT_HEAD
                      and size == end + 11 + (data[end + 9] << 8 | data[end + 10])
                      and data[end + 6] == 0
                      and (size == end + 11 or options_fit(data, end + 11, size))
                      and (tcp or size <= MAX_UDP_QUERY)):
                    opt = self._opt[data[end + 7] >> 7]
                    if tcp:
                        limit = TCP_LIMIT
                    else:
                        limit = data[end + 3] << 8 | data[end + 4]
                        limit = 512 if limit < 512 else min(limit, self.udp_size)
                else:
                    return self._parse(data, tcp, client)
                self.stats.counts[answer.stat] += 1
                variants = answer.variants
                if variants:  # a few records, every order pre-joined: the common case
                    counts, counts_edns, body = variants[int(random() * len(variants))]
                    response = b"".join((data[:2], answer.flags[(data[2] & 1) | (data[3] & 0x10)],
                                         counts_edns if opt else counts, data[12:end], body,
                                         opt))
                    if len(response) <= limit:
                        return response
                response, truncated = answer.render(
                    data[:2], (data[2] & 1) | (data[3] & 0x10), data[12:end], opt, limit,
                    client)
                if truncated:
                    self.stats.truncated += 1
                return response
        return self._parse(data, tcp, client)

    def _bare(self, data: bytes, rcode: int, qtype: str, question: bytes = b"") -> bytes:
        """A response with no records (FORMERR, NOTIMP), echoing the question when readable.

        The query's opcode is echoed (RFC 1035 4.1.1), so a NOTIMP for an UPDATE or a NOTIFY
        matches the query it answers.
        """
        self.stats.count(qtype, RCODE_NAMES[rcode])
        flags = self._bare_flags[rcode][(data[2] & 1) | (data[3] & 0x10)]
        opcode = data[2] & 0x78
        if opcode:
            flags = bytes((flags[0] | opcode, flags[1]))
        return data[:2] + flags + _COUNTS.pack(1 if question else 0, 0, 0, 0) + question

    def _question(self, data: bytes) -> tuple[list[bytes], int, int, int]:
        """The question's labels, its end, type and class; Malformed when unreadable."""
        try:
            labels, end = read_name(data, 12)
        except BadName as exc:
            raise Malformed(str(exc)) from None
        if end + 4 > len(data):
            raise Malformed("question runs past the end of the packet")
        qtype, qclass = _QUESTION_TAIL.unpack_from(data, end)
        return labels, end + 4, qtype, qclass

    def _parse(self, data: bytes, tcp: bool,
               client: Hashable | None = None) -> bytes | Forward | None:
        stats = self.stats
        if len(data) < 12 or data[2] & 0x80:  # unreadable, or a response: never answer those
            stats.dropped += 1
            return None
        qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
        if (data[2] >> 3) & 0x0F:
            question = b""
            if qdcount == 1:
                with contextlib.suppress(Malformed):
                    question = data[12:self._question(data)[1]]
            return self._bare(data, NOTIMP, "other", question)
        if qdcount != 1 or (not tcp and len(data) > MAX_UDP_QUERY):
            return self._bare(data, FORMERR, "other")
        try:
            labels, end, qtype, qclass = self._question(data)
            question = data[12:end]
            additional = additional_records(data, end, arcount)
        except Malformed:
            return self._bare(data, FORMERR, "other")
        name = type_name(qtype)
        opts = [rr for rr in additional if rr[1] == TYPE_OPT]
        if (ancount or nscount or len(opts) > 1 or qtype == TYPE_OPT
                or any(not root for root, *_ in opts)):
            return self._bare(data, FORMERR, name, question)
        opt = b""
        limit = TCP_LIMIT if tcp else 512
        if opts:
            _, _, udp_size, ttl = opts[0]
            do_bit = bool(ttl & 0x8000)
            if (ttl >> 16) & 0xFF:  # an EDNS version we do not speak (RFC 6891 6.1.3)
                stats.count(name, RCODE_NAMES[BADVERS])
                flags = self._bare_flags[0][(data[2] & 1) | (data[3] & 0x10)]
                return (data[:2] + flags + _COUNTS.pack(1, 0, 0, 1) + question
                        + opt_record(self.udp_size, do_bit, BADVERS >> 4))
            opt = self._opt[do_bit]
            if not tcp:
                limit = max(512, min(udp_size, self.udp_size))
        zone = self.zone
        if qclass != CLASS_IN or qtype in _TRANSFERS:
            answer = zone.refused(qtype)
        else:
            found = zone.lookup(labels, qtype)
            if found is None and self.forwarding and (
                    self.forward_allow is None or self.forward_allow(client)):
                return FORWARD  # not an open resolver: others get REFUSED
            answer = found if found is not None else zone.refused(qtype)
        stats.counts[answer.stat] += 1
        response, truncated = answer.render(
            data[:2], (data[2] & 1) | (data[3] & 0x10), question, opt, limit, client)
        if truncated:
            stats.truncated += 1
        return response
