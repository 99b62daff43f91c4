"""Pickers, the balancing algorithms: each picks one backend from a route's candidates for a
new client."""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Protocol

from pilotfish.lb.pool import Backend
from pilotfish.lb.shared import Cell


class Picker(Protocol):
    """Chooses a backend for a client; `exclude` holds backends that already failed to connect."""

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None: ...


def _allowed(candidates: Sequence[Backend], exclude: Sequence[Backend]) -> Sequence[Backend]:
    return [b for b in candidates if b not in exclude] if exclude else candidates


class RoundRobin:
    """Each backend in turn, from a random start per process (so many balancers do not align).

    With workers, `turns` counts every worker's picks (pilotfish.lb.shared), so the turn is
    the machine's, not each worker's: two workers picking at the same instant may both take
    the same backend, nothing worse."""

    def __init__(self, turns: Cell | None = None) -> None:
        self.cursor = random.randrange(1 << 30)
        self.turns = turns

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None:
        allowed = _allowed(candidates, exclude)
        if not allowed:
            return None
        turns = self.turns
        if turns is None:
            self.cursor += 1
            return allowed[self.cursor % len(allowed)]
        turns.add(1)
        return allowed[turns.total() % len(allowed)]


class LeastConnections(RoundRobin):
    """The backend with the fewest active connections (every worker's); ties go round
    robin."""

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None:
        allowed = _allowed(candidates, exclude)
        if not allowed:
            return None
        self.cursor += 1
        count = len(allowed)
        start = self.cursor % count
        best = allowed[start]
        least = best.load()
        for offset in range(1, count):
            backend = allowed[(start + offset) % count]
            load = backend.load()
            if load < least:
                best, least = backend, load
        return best


class PowerOfTwo:
    """Two backends at random, the one with fewer active connections wins (the default):
    near least-connections balance without every balancer herding onto the same backend."""

    def __init__(self) -> None:
        self.random = random.Random()

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None:
        allowed = _allowed(candidates, exclude)
        count = len(allowed)
        if count < 2:
            return allowed[0] if allowed else None
        first = int(self.random.random() * count)
        second = int(self.random.random() * (count - 1))
        if second >= first:
            second += 1
        a, b = allowed[first], allowed[second]
        a_active, b_active = a.load(), b.load()  # with workers: every worker's connections
        if a_active * b.weight != b_active * a.weight:
            return a if a_active * b.weight < b_active * a.weight else b
        return a


class Weighted:
    """Smooth weighted round robin (as nginx): shares follow instance `weight` exactly,
    interleaved rather than in bursts."""

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None:
        allowed = _allowed(candidates, exclude)
        if not allowed:
            return None
        total = 0
        best = allowed[0]
        for backend in allowed:
            backend.current_weight += backend.weight
            total += backend.weight
            if backend.current_weight > best.current_weight:
                best = backend
        best.current_weight -= total
        return best


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ConsistentHash:
    """A hash ring on the client address: a client keeps its backend, and a pool change
    moves only the clients of the backends that came or went (about 1/N)."""

    POINTS = 160  # ring points per unit of weight, capped below

    def __init__(self) -> None:
        self._members: tuple[tuple[int, int], ...] = ()
        self._ring: list[int] = []
        self._owners: list[Backend] = []

    def _build(self, candidates: Sequence[Backend]) -> None:
        points: list[tuple[int, Backend]] = []
        for backend in candidates:
            count = self.POINTS * min(backend.weight, 16)
            points += [(_hash(f"{backend.name}#{i}"), backend) for i in range(count)]
        points.sort(key=lambda point: point[0])
        self._ring = [point[0] for point in points]
        self._owners = [point[1] for point in points]
        self._members = tuple((id(b), b.weight) for b in candidates)

    def pick(self, candidates: Sequence[Backend], client: str,
             exclude: Sequence[Backend]) -> Backend | None:
        if not candidates:
            return None
        if tuple((id(b), b.weight) for b in candidates) != self._members:
            self._build(candidates)
        start = bisect.bisect(self._ring, _hash(client)) % len(self._ring)
        for step in range(len(self._ring)):
            owner = self._owners[(start + step) % len(self._ring)]
            if owner not in exclude:
                return owner
        return None


ALGORITHMS: dict[str, type[Picker]] = {
    "p2c": PowerOfTwo, "round_robin": RoundRobin, "least_conn": LeastConnections,
    "weighted": Weighted, "hash": ConsistentHash,
}


def make_picker(name: str, turns: Cell | None = None) -> Picker:
    """A new picker for a route's `balance` option (see routes.BALANCES); `turns`: the
    route's shared pick count when workers share the route (round robin takes turns on it)."""
    return RoundRobin(turns) if name == "round_robin" else ALGORITHMS[name]()
