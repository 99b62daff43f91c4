"""What the backends on a remote store share: the stored-lease record, the lease cache, and the
check-and-set retry loop, so that each backend holds only what is its own."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pilotfish.catalog.expiry import ExpiringSnapshots, Freshness
from pilotfish.catalog.interface import Catalog
from pilotfish.catalog.model import Instance, Lease, ttl_seconds

T = TypeVar("T")

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 8  # optimistic-concurrency retries of one write before giving up


def decode_instance(stored: bytes | Mapping[str, Any]) -> Instance | None:
    """A stored instance, or None (logged) when it no longer validates: one record written by
    an older version must not hide the rest of the catalog."""
    try:
        data = json.loads(stored) if isinstance(stored, bytes) else stored
        return Instance.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring malformed instance %r: %s", bytes(stored)[:100]
                    if isinstance(stored, bytes) else dict(stored), exc)
        return None


class Conflict(Exception):
    """Another writer changed what a check-and-set write compared: read again and retry."""


@dataclass(slots=True)
class StoredLease:
    """A lease as a backend stores it (JSON ttl, owner, expires_at) with the store's versions."""

    id: str
    ttl: int
    owner: str
    expires_at: float = 0.0  # wall clock, as the last keepalive wrote it (0: kept elsewhere)
    version: int = 0  # what check-and-set compares (Consul ModifyIndex, znode version)
    revision: int = 0  # the store's change order where it is not `version` (zxid); 0: unknown

    def value(self) -> Lease:
        """The Lease callers see."""
        return Lease(id=self.id, ttl=self.ttl, owner=self.owner, expires_at=self.expires_at)

    def live(self, now: float) -> bool:
        """Whether its expiry is still ahead of `now` (wall clock)."""
        return self.expires_at > now

    def encode(self, expiry: bool = True, compact: bool = False) -> bytes:
        """The stored JSON; without expiry where the store keeps it apart (etcd)."""
        data: dict[str, Any] = {"ttl": self.ttl, "owner": self.owner}
        if expiry:
            data["expires_at"] = self.expires_at
        if compact:
            return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return json.dumps(data).encode()

    @classmethod
    def decode(cls, lease_id: str, raw: bytes | None, version: int = 0, revision: int = 0,
               expiry: bool = True) -> StoredLease:
        """Read the stored JSON back; raises ValueError, KeyError or TypeError if malformed."""
        data = json.loads(raw or b"{}")
        return cls(lease_id, ttl_seconds(data["ttl"]), str(data.get("owner", "")),
                   float(data["expires_at"]) if expiry else 0.0, version, revision)

    @classmethod
    def parse(cls, lease_id: str, raw: bytes | None, version: int = 0, revision: int = 0,
              expiry: bool = True) -> StoredLease | None:
        """Like decode, but None for a record that is not a lease (written by someone else)."""
        try:
            return cls.decode(lease_id, raw, version, revision, expiry)
        except (ValueError, KeyError, TypeError):
            return None


class CachedCatalog(Catalog):
    """A catalog served from a cache of a remote store: the leases seen, and snapshots that drop
    an instance when its lease's expiry passes on the reader's Freshness clock."""

    def __init__(self, freshness: Freshness | None = None) -> None:
        super().__init__()
        self.freshness = freshness if freshness is not None else Freshness()
        self._snapshots = ExpiringSnapshots(self.changes.notify, self.freshness)
        self._leases: dict[str, StoredLease] = {}

    @property
    def lease_count(self) -> int:
        """Leases in the cache, for metrics."""
        return len(self._leases)

    def _changed(self) -> None:
        """The cache changed: rebuild the snapshot on the next read and wake watchers."""
        self._snapshots.changed()

    async def _read_lease(self, lease_id: str) -> StoredLease | None:
        """Hook: the lease as the store holds it now (not the cache), or None."""
        raise NotImplementedError

    async def _lease(self, lease_id: str) -> Lease | None:
        # By the wall clock, as keepalive decides (the reader's grace is for reads).
        record = await self._read_lease(lease_id)
        if record is None or not record.live(time.time()):
            return None
        return record.value()

    def _expiry_of(self, lease_id: str) -> float | None:
        """When a lease's instances stop being served (wall clock); None if it is unknown."""
        lease = self._leases.get(lease_id)
        return None if lease is None else lease.expires_at


async def retry_on_conflict(attempt: Callable[[int], Awaitable[T]],
                            give_up: Callable[[], Exception],
                            attempts: int = WRITE_ATTEMPTS) -> T:
    """Run a read-then-check-and-set `attempt(n)` (n = 0, 1, ...) until it raises no Conflict;
    after `attempts` tries raise give_up() (the store kept changing under us)."""
    for number in range(attempts):
        try:
            return await attempt(number)
        except Conflict:
            continue
    raise give_up()
