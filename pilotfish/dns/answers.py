"""Pre-encoded responses: everything after the question, ready to join with a query's header.

A response to a query is its ID, flags, section counts, the question exactly as the client sent
it (so its case is echoed), then a body encoded when the view changed. Owner names in answers
point at the question name, so one body fits every spelling of the name.

Records are kept in ring order (sorted by a hash of what they stand for) and joined once, with
the offset of every record, so any answer is a slice or two of one byte string:

- a whole answer starts at a random record (a rotation), so plain clients spread their load;
- a partial answer (over the size limit, or over the cap on A/AAAA records) is the window of
  records that follows the client's own point on the ring (a hash of its address and port).
  The same client socket gets the same set while the catalog does not change, one instance
  joining or leaving moves at most one record of it, and clients on other sockets get other
  windows.
"""

from __future__ import annotations

import functools
import itertools
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Sequence
from random import random

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode, carried in the OPT record
RCODE_NAMES = {NOERROR: "NOERROR", FORMERR: "FORMERR", SERVFAIL: "SERVFAIL",
               NXDOMAIN: "NXDOMAIN", NOTIMP: "NOTIMP", REFUSED: "REFUSED", BADVERS: "BADVERS"}

# Every permutation is pre-built up to this many records; bigger sets are rotated.
PERMUTE_UP_TO = 4
WINDOWS_KEPT = 1024  # cut windows remembered per answer (by start record and room)

_COUNTS = struct.Struct("!HHHH")

# (counts without OPT, counts with OPT, body)
Variant = tuple[bytes, bytes, bytes]


@functools.cache
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


def client_point(client: Hashable) -> int:
    """Where a client (its address and port) sits on a 32-bit ring; stable for this process."""
    return hash(client) & 0xFFFFFFFF


class Answer:
    """The pre-encoded response to one (name, type): its rcode, records, and how to cut them."""

    __slots__ = ("rcode", "stat", "answers", "extras", "authority", "count", "cap", "flags",
                 "truncated_flags", "variants", "body", "offsets", "points", "extra_body",
                 "extra_offsets", "whole_counts", "min_extra", "windows")

    def __init__(
        self,
        rcode: int,
        stat: int,
        answers: Sequence[bytes] = (),
        extras: Sequence[bytes] = (),
        authority: Sequence[bytes] = (),
        *,
        authoritative: bool = True,
        recursion: bool = False,
        cap: int = 0,
        points: Sequence[int] = (),
    ) -> None:
        self.rcode = rcode
        self.stat = stat  # index of the (type, rcode) counter this answer bumps
        self.answers = tuple(answers)
        n = len(self.answers)
        # one additional record (or b"") per answer: the SRV target's address
        self.extras = tuple(extras) if extras else (b"",) * n
        self.points = tuple(points) if len(points) == n else ()  # sorted, one per answer
        self.authority = b"".join(authority)
        self.count = len(authority)
        self.cap = cap if 0 < cap < n else n
        self.flags = flag_table(rcode, authoritative, recursion)
        self.truncated_flags = flag_table(rcode, authoritative, recursion, truncated=True)
        self.windows: dict[tuple[int, int], tuple[bytes, bytes, bytes, bool]] = {}
        self.variants: tuple[Variant, ...] = ()
        self.body = b""
        self.offsets: list[int] = []
        if n <= PERMUTE_UP_TO:
            self._join()
            if n and self.cap == n:
                self.variants = tuple(
                    (*self.whole_counts, b"".join(self.answers[i] for i in order)
                     + self.authority + self.extra_body)
                    for order in itertools.permutations(range(n)))
        # bigger answers are joined on first use: a burst of changes to a big service joins
        # its records once, for the first query after it, not once per change

    def _join(self) -> None:
        """Join the records and note where each starts, for rotations and windows."""
        n = len(self.answers)
        self.body = b"".join(self.answers)
        # offsets[i]: where record i starts in body, over the ring twice so windows can wrap
        sizes = list(map(len, self.answers))
        self.offsets = list(itertools.accumulate(sizes + sizes, initial=0))
        unique_extras = [e for e in dict.fromkeys(self.extras) if e]
        self.extra_body = b"".join(unique_extras)
        self.extra_offsets = list(itertools.accumulate(map(len, unique_extras), initial=0))
        self.min_extra = min(map(len, unique_extras), default=0)
        self.whole_counts = (_COUNTS.pack(1, n, self.count, len(unique_extras)),
                             _COUNTS.pack(1, n, self.count, len(unique_extras) + 1))

    def render(self, query_id: bytes, flag_index: int, question: bytes, opt: bytes,
               limit: int, client: Hashable | None = None) -> tuple[bytes, bool]:
        """The response for a query and whether it is truncated (TC) to fit `limit` octets."""
        n = len(self.answers)
        if not self.offsets:
            self._join()
        if self.cap == n:
            variants = self.variants
            if variants:
                counts, counts_edns, body = variants[int(random() * len(variants))]
                response = b"".join((query_id, self.flags[flag_index],
                                     counts_edns if opt else counts, question, body, opt))
                if len(response) <= limit:
                    return response, False
            else:
                size = (12 + len(question) + len(self.body) + len(self.authority)
                        + len(self.extra_body) + len(opt))
                if size <= limit:
                    body = self.body
                    cut = self.offsets[int(random() * n)] if n > 1 else 0
                    return b"".join((query_id, self.flags[flag_index],
                                     self.whole_counts[1 if opt else 0], question, body[cut:],
                                     body[:cut], self.authority, self.extra_body, opt)), False
            room = limit - 12 - len(question) - len(opt) - len(self.authority)
            if len(self.body) <= room:  # every answer fits; the additional data, as far as it can
                return self._whole_without_all_extras(query_id, flag_index, question, opt,
                                                      room - len(self.body)), False
        return self.window(query_id, flag_index, question, opt, limit, client)

    def _whole_without_all_extras(self, query_id: bytes, flag_index: int, question: bytes,
                                  opt: bytes, room: int) -> bytes:
        """Every answer record, and the additional records that fit (RFC 2181 9: no TC)."""
        n = len(self.answers)
        kept = bisect_right(self.extra_offsets, room) - 1
        body = self.body
        cut = self.offsets[int(random() * n)] if n > 1 else 0
        counts = _COUNTS.pack(1, n, self.count, kept + (1 if opt else 0))
        return b"".join((query_id, self.flags[flag_index], counts, question, body[cut:],
                         body[:cut], self.authority, self.extra_body[:self.extra_offsets[kept]],
                         opt))

    def start(self, client: Hashable | None) -> int:
        """The record a client's window begins at: after its point on the ring, or random."""
        n = len(self.answers)
        if client is None or not self.points:
            return int(random() * n)
        index = bisect_left(self.points, client_point(client))
        return index if index < n else 0

    def window(self, query_id: bytes, flag_index: int, question: bytes, opt: bytes,
               limit: int, client: Hashable | None = None) -> tuple[bytes, bool]:
        """The client's window: up to `cap` records in ring order, TC when fewer fit."""
        if not self.offsets:
            self._join()
        room = limit - 12 - len(question) - len(opt)
        start = self.start(client) if self.answers else 0
        cut = self.windows.get((start, room))
        if cut is None:
            if len(self.windows) >= WINDOWS_KEPT:
                self.windows.clear()
            cut = self.windows[(start, room)] = self._cut(start, room)
        counts, counts_edns, tail, truncated = cut
        flags = self.truncated_flags if truncated else self.flags
        return b"".join((query_id, flags[flag_index], counts_edns if opt else counts, question,
                         tail, opt)), truncated

    def _cut(self, start: int, room: int) -> tuple[bytes, bytes, bytes, bool]:
        """Counts (without and with OPT), sections and TC of the window at `start` in `room`."""
        n = len(self.answers)
        offsets = self.offsets
        first = offsets[start]
        # the most records from `start` whose bytes fit in the room, at most cap
        end = bisect_right(offsets, first + room, start, start + self.cap + 1) - 1
        kept = end - start
        truncated = kept < self.cap
        body = self.body
        if end <= n:
            records = body[first:offsets[end]]
        else:
            records = body[first:] + body[:offsets[end - n]]
        room -= len(records)
        authority = b""
        if not kept and not truncated:
            authority = self.authority
            room -= len(authority)
        extras: list[bytes] = []
        if room >= self.min_extra > 0:
            all_extras = self.extras
            for extra in dict.fromkeys(all_extras[i % n] for i in range(start, end)):
                if extra and len(extra) <= room:
                    extras.append(extra)
                    room -= len(extra)
        nscount = self.count if authority else 0
        return (_COUNTS.pack(1, kept, nscount, len(extras)),
                _COUNTS.pack(1, kept, nscount, len(extras) + 1),
                b"".join((records, authority, *extras)), truncated)
