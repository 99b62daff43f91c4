"""The one interface every backend implements, and the snapshot every consumer reads."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Self

from pilotfish.catalog.checks import merge_reports, unreported
from pilotfish.catalog.entries import ConfigEntry, encode_entry, entry_name, entry_version
from pilotfish.catalog.model import (
    Instance,
    InvalidField,
    Lease,
    identifier,
    owner_text,
    ttl_seconds,
)
from pilotfish.loop import wait_event


class CatalogError(Exception):
    """Base of the errors a catalog reports to its callers."""


class UnknownLease(CatalogError):
    """The lease does not exist (never did, was revoked, or lapsed): re-register."""

    def __init__(self, lease_id: str) -> None:
        super().__init__(f"lease {lease_id!r} is unknown or has lapsed")
        self.lease_id = lease_id


class BackendUnavailable(CatalogError):
    """The backend cannot be reached right now; callers retry, consumers fail static."""


class EntryConflict(CatalogError):
    """A config entry is no longer at the version a write compared: read it again."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"config entry {name!r} is no longer at version {version}: "
                         "read it again")
        self.name, self.version = name, version


class Snapshot:
    """An immutable set of every live instance, stamped with the catalog index it reflects."""

    __slots__ = ("index", "instances", "_by_service")

    def __init__(self, index: int, instances: Iterable[Instance] | Mapping[str, Instance]) -> None:
        self.index = index
        if isinstance(instances, Mapping):
            self.instances: Mapping[str, Instance] = dict(instances)
        else:
            self.instances = {instance.id: instance for instance in instances}
        self._by_service: dict[str, tuple[Instance, ...]] | None = None

    def get(self, instance_id: str) -> Instance | None:
        """The instance with that id, if it is live."""
        return self.instances.get(instance_id)

    def by_service(self) -> Mapping[str, tuple[Instance, ...]]:
        """Instances grouped by service name, each group ordered by id."""
        if self._by_service is None:
            groups: dict[str, list[Instance]] = {}
            for instance in sorted(self.instances.values(), key=lambda i: i.id):
                groups.setdefault(instance.service, []).append(instance)
            self._by_service = {name: tuple(group) for name, group in sorted(groups.items())}
        return self._by_service

    def service(self, name: str, tag: str | None = None) -> tuple[Instance, ...]:
        """Live instances of one service (case-insensitive), optionally only those with a tag."""
        instances = self.by_service().get(name.lower(), ())
        if tag is None:
            return instances
        return tuple(i for i in instances if tag in i.tags)

    def __len__(self) -> int:
        return len(self.instances)

    def __repr__(self) -> str:
        return f"Snapshot(index={self.index}, instances={len(self.instances)})"


class ChangeSignal:
    """Lets any number of waiters sleep until the catalog changes past a generation they saw."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every waiter: something changed."""
        self.generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_past(self, generation: int, timeout: float) -> bool:
        """Wait until the generation moves past `generation`; False on timeout."""
        if self.generation != generation:
            return True
        return await wait_event(self._event, timeout)


class Catalog(ABC):
    """Registrations on heartbeated leases, with snapshots and watches; one per backend URL."""

    def __init__(self) -> None:
        self.changes = ChangeSignal()
        self.expirations = 0  # leases seen to lapse, for metrics

    @property
    def lease_count(self) -> int | None:
        """Live leases, where the backend can count them cheaply; None otherwise."""
        return None

    @classmethod
    @abstractmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> Self:
        """Build the catalog a URL names and `start` it; open_catalog calls this.

        `token_file` and `ca_file` are for backends that talk to a pilotfish API; others
        ignore them.
        """

    async def start(self) -> None:
        """Connect and begin following the backend; from_url calls it once, before use."""

    # The public methods validate their input, the same way on every backend, and then call
    # the backend's hook: a hook only ever sees well-formed values.

    async def create_lease(self, ttl: int, owner: str = "") -> Lease:
        """Grant a new lease that lapses ttl seconds after its last keepalive."""
        return await self._create_lease(ttl_seconds(ttl), owner_text(owner))

    async def keepalive(self, lease_id: str) -> Lease:
        """Renew a lease; raises UnknownLease when it is gone, so the caller re-registers."""
        return await self._keepalive(identifier(lease_id, "lease"))

    async def lease(self, lease_id: str) -> Lease | None:
        """The live lease with that id, or None."""
        return await self._lease(identifier(lease_id, "lease"))

    async def revoke(self, lease_id: str) -> bool:
        """End a lease now, removing every instance on it; False if it was unknown."""
        return await self._revoke(identifier(lease_id, "lease"))

    async def register(self, instance: Instance) -> bool:
        """Upsert an instance on its lease (UnknownLease if absent); True if it was new."""
        if not isinstance(instance, Instance):
            raise InvalidField("instance", "must be an Instance")
        if any(unreported(c) for c in instance.checks):  # keep what the app reported
            instance = merge_reports((await self.snapshot()).get(instance.id), instance)
        return await self._register(instance)

    async def deregister(self, instance_id: str) -> Instance | None:
        """Remove one instance; returns what was removed, or None if it was absent."""
        return await self._deregister(identifier(instance_id, "id"))

    async def config_entry(self, name: str) -> ConfigEntry:
        """The config entry `name` as stored now (version 0 and empty: never written)."""
        return await self._config_entry(entry_name(name))

    async def put_config_entry(self, name: str, value: Mapping[str, object],
                               version: int) -> ConfigEntry:
        """Replace the entry if it is still at `version` (0: not written yet), else raise
        EntryConflict; the entry as stored right after the write."""
        name, data = entry_name(name), encode_entry(value)
        return await self._put_config_entry(name, data, entry_version(version))

    @abstractmethod
    async def _config_entry(self, name: str) -> ConfigEntry:
        """Hook: read one config entry (a valid name) from the backend, not from a cache."""

    @abstractmethod
    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        """Hook: store `data` (JSON) as the entry if it is at `version`; EntryConflict if not."""

    @abstractmethod
    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        """Hook: grant a lease (ttl and owner already valid)."""

    @abstractmethod
    async def _keepalive(self, lease_id: str) -> Lease:
        """Hook: renew a lease (a well-formed id); UnknownLease when it is gone."""

    @abstractmethod
    async def _lease(self, lease_id: str) -> Lease | None:
        """Hook: the live lease with that well-formed id, or None."""

    @abstractmethod
    async def _revoke(self, lease_id: str) -> bool:
        """Hook: end a lease now with its instances; False if it was unknown."""

    @abstractmethod
    async def _register(self, instance: Instance) -> bool:
        """Hook: upsert an instance on its lease; True if it was new."""

    @abstractmethod
    async def _deregister(self, instance_id: str) -> Instance | None:
        """Hook: remove one instance (a well-formed id); what was removed, or None."""

    @abstractmethod
    async def snapshot(self) -> Snapshot:
        """Every live instance now, with the index of the last change."""

    async def watch(self, index: int, timeout: float) -> Snapshot:
        """Return a snapshot newer than `index`, or the current one once timeout elapses.

        An index ahead of the catalog (a client of a restarted registry) returns at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            generation = self.changes.generation
            snapshot = await self.snapshot()
            remaining = deadline - loop.time()
            if snapshot.index != index or remaining <= 0:
                return snapshot
            await self.changes.wait_past(generation, remaining)

    async def healthy(self) -> bool:
        """Whether the backend answers; the health endpoints report this."""
        return True

    async def close(self) -> None:
        """Release connections and background tasks."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
