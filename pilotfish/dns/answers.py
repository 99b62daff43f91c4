"""Pre-encoded responses: everything after the question, ready to join with a query's header.

A response to a query is its ID, flags, section counts, the question exactly as the client sent
it (so its case is echoed), then a body encoded when the view changed. Owner names in answers
point at the question name, so one body fits every spelling of the name.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from random import random, sample

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode, carried in the OPT record
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL",
               NXDOMAIN: "NXDOMAIN", NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

# Every permutation is pre-built up to this many records; bigger sets are shuffled per query.
PERMUTE_UP_TO = 4

_COUNTS = struct.Struct("!HHHH")

# (counts without OPT, counts with OPT, body, answer order)
Variant = tuple[bytes, bytes, bytes, tuple[int, ...]]


def flag_table(rcode: int, authoritative: bool, recursion: bool,
               truncated: bool = False) -> tuple[bytes, ...]:
    """The two flag octets of a response, indexed by the query's RD bit | CD bit (0x10).

    QR is set, opcode is QUERY, RD and CD are copied from the query (RFC 1035, RFC 4035).
    """
    high = 0x80 | (0x04 if authoritative else 0) | (0x02 if truncated else 0)
    low = (0x80 if recursion else 0) | (rcode & 0x0F)
    table = [b""] * 18
    for rd in (0, 1):
        for cd in (0, 0x10):
            table[rd | cd] = bytes((high | rd, low | cd))
    return tuple(table)


class Answer:
    """The pre-encoded response to one (name, type): its rcode, records and their variants."""

    __slots__ = ("rcode", "stat", "answers", "extras", "authority", "cap", "flags",
                 "truncated_flags", "variants", "count")

    def __init__(
        self,
        rcode: int,
        stat: int,
        answers: Sequence[bytes] = (),
        extras: Sequence[Sequence[bytes]] = (),
        authority: Sequence[bytes] = (),
        *,
        authoritative: bool = True,
        recursion: bool = False,
        cap: int = 0,
    ) -> None:
        self.rcode = rcode
        self.stat = stat  # index of the (type, rcode) counter this answer bumps
        self.answers = tuple(answers)
        self.extras = tuple(tuple(e) for e in extras) or tuple(() for _ in self.answers)
        self.authority = b"".join(authority)
        self.count = len(authority)
        self.cap = cap if 0 < cap < len(self.answers) else len(self.answers)
        self.flags = flag_table(rcode, authoritative, recursion)
        self.truncated_flags = flag_table(rcode, authoritative, recursion, truncated=True)
        n = len(self.answers)
        if n <= PERMUTE_UP_TO:
            orders = dict.fromkeys(p[: self.cap] for p in itertools.permutations(range(n)))
            self.variants: tuple[Variant, ...] = tuple(self._variant(o) for o in orders)
        else:
            self.variants = ()

    def _variant(self, order: tuple[int, ...]) -> Variant:
        extras = dict.fromkeys(rr for i in order for rr in self.extras[i])
        body = b"".join(self.answers[i] for i in order) + self.authority + b"".join(extras)
        counts = _COUNTS.pack(1, len(order), self.count, len(extras))
        counts_edns = _COUNTS.pack(1, len(order), self.count, len(extras) + 1)
        return counts, counts_edns, body, order

    def pick(self) -> Variant:
        """A variant in random order: one of every permutation, or a fresh shuffle."""
        variants = self.variants
        if variants:
            return variants[int(random() * len(variants))] if len(variants) > 1 else variants[0]
        return self._variant(tuple(sample(range(len(self.answers)), self.cap)))

    def render(self, query_id: bytes, flag_index: int, question: bytes, opt: bytes,
               limit: int) -> tuple[bytes, bool]:
        """The response for a query; TC with the answers that fit when over `limit` octets."""
        counts, counts_edns, body, order = self.pick()
        response = b"".join((query_id, self.flags[flag_index], counts_edns if opt else counts,
                             question, body, opt))
        if len(response) <= limit:
            return response, False
        return self.truncate(query_id, flag_index, question, opt, limit, order), True

    def truncate(self, query_id: bytes, flag_index: int, question: bytes, opt: bytes,
                 limit: int, order: tuple[int, ...]) -> bytes:
        """Whole answer records in the given order while they fit, no additional data, TC set.

        Clients that see TC retry over TCP; those that do not still get usable records.
        """
        room = limit - 12 - len(question) - len(opt)
        kept: list[bytes] = []
        authority = self.authority if not order else b""
        room -= len(authority)
        for i in order:
            rr = self.answers[i]
            if len(rr) > room:
                break
            kept.append(rr)
            room -= len(rr)
        counts = _COUNTS.pack(1, len(kept), self.count if authority else 0, 1 if opt else 0)
        return b"".join((query_id, self.truncated_flags[flag_index], counts, question,
                         *kept, authority, opt))
