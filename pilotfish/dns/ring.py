"""The answer ring: the encoded records of one instance, and the groups of instances answered
under one name (a service, or one of its tags), kept in ring order as instances come and go."""

from __future__ import annotations

import zlib
from bisect import bisect_left
from dataclasses import dataclass

from pilotfish.dns.answers import Answer


def ring_point(value: str) -> int:
    """A stable 32-bit position on the answer ring for an instance id or an address."""
    return zlib.crc32(value.encode())


@dataclass(slots=True)
class InstanceRecords:
    """The encoded records of one instance, shared by every name it appears under."""

    srv: bytes  # owned by the question name
    extra: bytes  # the SRV target's A/AAAA, for the additional section
    address: bytes  # the address owned by the question name
    address_text: str
    v6: bool
    point: int  # where the instance sits on the ring
    address_point: int
    labels: tuple[str, ...]  # its tags that are DNS labels
    hosts: tuple[tuple[bytes, str], ...]  # (<hex>.addr name, address), (target name, address)


class RingGroup:
    """Instances answered under one set of names (a service, or one tag of it), in ring order.

    Adding or removing one instance is a bisect and a list insertion; the answers are joined
    again from these lists only when asked for after a change.
    """

    __slots__ = ("keys", "points", "srv", "extras", "address_keys", "address_points",
                 "address_records", "address_counts", "cached")

    def __init__(self) -> None:
        self.keys: list[tuple[int, str]] = []  # (ring point, instance id), sorted
        self.points: list[int] = []
        self.srv: list[bytes] = []
        self.extras: list[bytes] = []
        self.address_keys: tuple[list[tuple[int, str]], list[tuple[int, str]]] = ([], [])
        self.address_points: tuple[list[int], list[int]] = ([], [])
        self.address_records: tuple[list[bytes], list[bytes]] = ([], [])
        self.address_counts: dict[str, int] = {}
        self.cached: dict[int, Answer] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, instance_id: str, records: InstanceRecords) -> None:
        """Place an instance's records on the ring."""
        entry = (records.point, instance_id)
        at = bisect_left(self.keys, entry)
        self.keys.insert(at, entry)
        self.points.insert(at, records.point)
        self.srv.insert(at, records.srv)
        self.extras.insert(at, records.extra)
        count = self.address_counts.get(records.address_text, 0)
        self.address_counts[records.address_text] = count + 1
        if not count:
            keys, rrs = self.address_keys[records.v6], self.address_records[records.v6]
            entry = (records.address_point, records.address_text)
            at = bisect_left(keys, entry)
            keys.insert(at, entry)
            self.address_points[records.v6].insert(at, records.address_point)
            rrs.insert(at, records.address)
        self.cached = None

    def remove(self, instance_id: str, records: InstanceRecords) -> None:
        """Take an instance's records off the ring."""
        at = bisect_left(self.keys, (records.point, instance_id))
        del self.keys[at], self.points[at], self.srv[at], self.extras[at]
        count = self.address_counts[records.address_text] - 1
        if count:
            self.address_counts[records.address_text] = count
        else:
            del self.address_counts[records.address_text]
            keys, rrs = self.address_keys[records.v6], self.address_records[records.v6]
            at = bisect_left(keys, (records.address_point, records.address_text))
            del keys[at], rrs[at], self.address_points[records.v6][at]
        self.cached = None
