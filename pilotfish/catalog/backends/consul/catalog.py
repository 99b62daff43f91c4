"""ConsulCatalog: the catalog operations on Consul KV leases and agent services."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

from consul.exceptions import BadRequest

from pilotfish.catalog.backends.consul.agent import (
    CHECK_PREFIX,
    CONSUL_MAX_META,
    DEFAULT_DEREGISTER_AFTER,
    ENTRY_PREFIX,
    LEASE_PREFIX,
    META_HEALTH,
    META_LEASE,
    PASS_CONCURRENCY,
    _from_agent,
    consul_checks,
    log,
    pilotfish_checks,
)
from pilotfish.catalog.backends.consul.reaper import ConsulReaper
from pilotfish.catalog.backends.stored import Conflict, StoredLease, retry_on_conflict
from pilotfish.catalog.entries import ConfigEntry, decode_entry
from pilotfish.catalog.interface import BackendUnavailable, EntryConflict, UnknownLease
from pilotfish.catalog.model import MAX_META, Check, Instance, InvalidField, Lease
from pilotfish.loop import cancel_and_wait


class ConsulCatalog(ConsulReaper):
    """A catalog on a Consul agent, readable by Consul's own catalog, UI and DNS."""

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> ConsulCatalog:
        """consul://host[:8500][?token=…&deregister_after=SECONDS]; https via ?scheme=https."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        try:
            deregister_after = int(query.get("deregister_after", DEFAULT_DEREGISTER_AFTER))
        except ValueError:
            deregister_after = 0
        if deregister_after < 1:
            raise InvalidField("deregister_after", "must be a positive number of seconds")
        catalog = cls(parts.hostname or "127.0.0.1", parts.port or 8500,
                      query.get("scheme", "http"), query.get("token"), deregister_after)
        await catalog.start()
        return catalog

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the cache once (so the first snapshot is complete), then follow changes."""
        with contextlib.suppress(BackendUnavailable):
            self._node = await self._node_name()
        leases_index = services_index = 0
        try:
            leases_index = await self._load_leases(0)
            services_index = await self._load_services(0)
        except BackendUnavailable as exc:
            log.warning("consul at %s unreachable, will keep trying: %s", self.address, exc)
        else:
            self._failing.clear()
        self._tasks = [
            asyncio.create_task(self._follow("leases", self._load_leases, leases_index)),
            asyncio.create_task(self._follow("services", self._load_services, services_index)),
            asyncio.create_task(self._reap_loop()),
        ]

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._tasks, *self._service_tasks.values())
        self._snapshots.close()
        await self._writer.close()
        await self._watcher.close()

    # -- leases ----------------------------------------------------------------

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        lease_id = uuid.uuid4().hex
        record = StoredLease(lease_id, ttl, owner, time.time() + ttl)
        if not await self._call(self._writer.kv.put(LEASE_PREFIX + lease_id, record.encode(),
                                                    cas=0)):
            raise BackendUnavailable(f"lease id {lease_id} already taken in consul")
        self._remember_lease(record)
        return record.value()

    async def _keepalive(self, lease_id: str) -> Lease:
        renewed = await retry_on_conflict(
            lambda attempt: self._renew(lease_id, trust_cache=attempt == 0),
            lambda: BackendUnavailable(
                f"lease {lease_id} kept changing under concurrent writers"))
        await self._pass_checks(lease_id)
        return renewed.value()

    async def _renew(self, lease_id: str, trust_cache: bool) -> StoredLease:
        """One check-and-set renewal; Conflict when another writer's ModifyIndex got there."""
        record = self._leases.get(lease_id) if trust_cache else None
        # The cache is only a hint: unknown index, or apparently lapsed (another process's
        # renewal may still be on its way to us), means ask KV.
        if record is None or record.version == 0 or not record.live(time.time()):
            record = await self._read_lease(lease_id)
        now = time.time()
        if record is None or not record.live(now):
            raise UnknownLease(lease_id)
        renewed = replace(record, expires_at=now + record.ttl, version=0)
        if not await self._call(self._writer.kv.put(LEASE_PREFIX + lease_id, renewed.encode(),
                                                    cas=record.version)):
            raise Conflict(lease_id)
        self._remember_lease(renewed)
        return renewed

    async def _revoke(self, lease_id: str) -> bool:
        record = await self._read_lease(lease_id)
        if record is None:
            return False
        await self._call(self._writer.kv.delete(LEASE_PREFIX + lease_id))
        self._forget_lease(lease_id)
        await self._deregister_leases({lease_id})
        return record.live(time.time())

    async def _pass_checks(self, lease_id: str) -> None:
        """Reset the TTL clock of every check of the lease's instances on this agent."""
        ids = {i for i, lease in self._registered.items() if lease == lease_id}
        for entries in self._services.values():
            for entry in entries.values():
                if entry.instance.lease == lease_id and self._node in (None, entry.node):
                    ids.add(entry.instance.id)
        if not ids:
            return
        limit = asyncio.Semaphore(PASS_CONCURRENCY)
        await asyncio.gather(*(self._pass_check(i, limit) for i in ids))

    async def _pass_check(self, instance_id: str, limit: asyncio.Semaphore) -> None:
        async with limit:
            # False (404): deregistered meanwhile, nothing to keep alive.
            await self._call(self._writer.agent.check.ttl_pass(CHECK_PREFIX + instance_id))

    # -- instances ---------------------------------------------------------------

    async def _register(self, instance: Instance) -> bool:
        reserved = {META_LEASE, META_HEALTH} & set(instance.meta)
        if reserved:
            raise InvalidField("meta", f"keys {sorted(reserved)} are reserved by pilotfish")
        if any(key.startswith("consul-") for key in instance.meta):
            raise InvalidField("meta", "keys starting with 'consul-' are reserved by Consul")
        extra = 1 if instance.health == "passing" else 2
        if len(instance.meta) + extra > CONSUL_MAX_META:
            raise InvalidField("meta", f"at most {min(MAX_META, CONSUL_MAX_META - extra)} keys "
                                       "on the consul backend")
        record = await self._live_lease(instance.lease)
        if record is None:
            raise UnknownLease(instance.lease)
        existing = await self._call(self._get(f"/v1/agent/service/{instance.id}"))
        previous = _from_agent(existing) if existing else None
        if previous is not None and previous == replace(instance, checks=()):
            previous = replace(previous, checks=await self._agent_checks(instance.id))
        if previous == instance:
            self._registered[instance.id] = instance.lease
            return False
        meta = dict(instance.meta)
        meta[META_LEASE] = instance.lease
        if instance.health != "passing":
            meta[META_HEALTH] = instance.health
        check = {
            "CheckID": CHECK_PREFIX + instance.id,
            "Name": "pilotfish lease",
            "Notes": f"kept passing by keepalives of pilotfish lease {instance.lease}",
            "TTL": f"{record.ttl}s",
            "DeregisterCriticalServiceAfter": f"{self._deregister_after}s",
            "Status": "passing",
        }
        try:
            await self._call(self._writer.agent.service.register(
                instance.service, service_id=instance.id, address=instance.address,
                port=instance.port, tags=list(instance.tags), meta=meta, check=check,
                weights={"Passing": instance.weight, "Warning": 1},
                extra_checks=consul_checks(instance), replace_existing_checks=True,
            ))
        except BadRequest as exc:
            raise InvalidField("instance", f"consul refused the registration: {exc}") from exc
        self._registered[instance.id] = instance.lease
        if instance.lease not in self._leases or await self._read_lease(instance.lease) is None:
            # Revoked while we registered: take it back rather than leave an orphan.
            await self._call(self._writer.agent.service.deregister(instance.id))
            self._registered.pop(instance.id, None)
            raise UnknownLease(instance.lease)
        return existing is None

    async def _agent_checks(self, instance_id: str) -> tuple[Check, ...]:
        """The pilotfish checks the agent holds for one of its services."""
        selector = 'ServiceID == "' + instance_id + '"'  # an id has no quote or backslash
        found = await self._call(self._get("/v1/agent/checks", [("filter", selector)]))
        mine = [c for c in (found or {}).values() if c.get("ServiceID") == instance_id]
        return pilotfish_checks(instance_id, mine)[0]

    async def _deregister(self, instance_id: str) -> Instance | None:
        existing = await self._call(self._get(f"/v1/agent/service/{instance_id}"))
        instance = _from_agent(existing) if existing else None
        if instance is None:
            return None  # absent, or not ours: foreign Consul services are left alone
        await self._call(self._writer.agent.service.deregister(instance_id))
        self._registered.pop(instance_id, None)
        return instance

    # -- config entries: one KV key each, versioned by its ModifyIndex -----------

    async def _config_entry(self, name: str) -> ConfigEntry:
        _, item = await self._call(self._writer.kv.get(ENTRY_PREFIX + name))
        if not item:
            return ConfigEntry(name)
        return decode_entry(name, item.get("Value"), int(item["ModifyIndex"]))

    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        if not await self._call(self._writer.kv.put(ENTRY_PREFIX + name, data, cas=version)):
            raise EntryConflict(name, version)
        # KV's answer is only true or false: read the new ModifyIndex back (a write that
        # followed ours at once shows instead, with its own version: the truth either way).
        return await self._config_entry(name)
