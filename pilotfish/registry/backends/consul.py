"""The Consul backend: instances are ordinary Consul agent services, leases live in Consul KV.

Layout in Consul (``consul://host:8500[?token=…&deregister_after=60]``):

- each instance is an agent service registration: Name = service, ID = instance id,
  Address, Port, Tags, Meta (the user's meta plus ``pilotfish-lease`` and, when not
  passing, ``pilotfish-health``), Weights (Passing = weight, so Consul DNS hands out the
  same SRV weights), and one TTL check ``pilotfish:<instance id>`` whose TTL is the
  lease's TTL, with DeregisterCriticalServiceAfter so Consul itself removes what a dead
  registrar left behind. They show up in ``consul catalog services``, the UI and DNS;
- each lease is a KV record ``pilotfish/leases/<lease id>`` holding its ttl, owner and
  wall-clock expiry. A keepalive is a check-and-set on that record (so a revoked or
  lapsed lease is never brought back) followed by a pass of each of the lease's TTL
  checks on this agent.

Reads never go to Consul per call: blocking queries (``index``/``wait``) on
``/v1/kv/pilotfish/leases/?recurse``, ``/v1/catalog/services`` and one
``/v1/health/service/<name>`` per service keep a local cache, and snapshots are built
from it, dropping every instance whose lease record is missing or past its expiry (a
timer wakes watchers at that moment, whatever Consul's own timers do). An instance
whose Consul checks include a critical one is reported with health "critical".

Client: py-consul's asyncio client (``consul.aio``, aiohttp underneath), one session
for writes and one for long polls so writes never queue behind blocking queries.
Agent semantics apply: a lease's instances must be registered and kept alive through
the same agent (the one this URL names), as with any Consul agent registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohttp
import consul.aio
from consul.callback import CB
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
)

from pilotfish.loop import cancel_and_wait
from pilotfish.registry.backends.stored import (
    CachedCatalog,
    Conflict,
    StoredLease,
    retry_on_conflict,
)
from pilotfish.registry.catalog import BackendUnavailable, Snapshot, UnknownLease
from pilotfish.registry.model import (
    MAX_META,
    Health,
    Instance,
    InvalidField,
    Lease,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_PREFIX = "pilotfish/leases/"
META_LEASE = "pilotfish-lease"
META_HEALTH = "pilotfish-health"
CHECK_PREFIX = "pilotfish:"
CONSUL_MAX_META = 64
DEFAULT_DEREGISTER_AFTER = 60  # Consul's documented minimum for DeregisterCriticalServiceAfter
REQUEST_TIMEOUT = 3.0
WATCH_WAIT = 10.0
LEASE_WAIT = 0.5  # the lease records' blocking query returns at least this often: each
# return proves the cache current, and expiry runs only while it is (see Freshness)
RETRY_DELAY = 0.5
PASS_CONCURRENCY = 64
REAP_PERIOD = 1.0


@dataclass(frozen=True, slots=True)
class _Entry:
    """One pilotfish instance as the health endpoint reported it."""

    instance: Instance
    node: str
    version: tuple[Any, ...] = ()  # what Consul reported, to skip rebuilding unchanged ones


class ConsulCatalog(CachedCatalog):
    """A catalog on a Consul agent, readable by Consul's own catalog, UI and DNS."""

    def __init__(self, host: str, port: int, scheme: str = "http", token: str | None = None,
                 deregister_after: int = DEFAULT_DEREGISTER_AFTER) -> None:
        super().__init__()
        self.address = f"{scheme}://{host}:{port}"
        self._token = token
        self._deregister_after = deregister_after
        self._writer = self._client(host, port, scheme, token)
        self._watcher = self._client(host, port, scheme, token, connections=100_000)
        self._node: str | None = None
        self._services: dict[str, dict[str, _Entry]] = {}
        self._service_tasks: dict[str, asyncio.Task[None]] = {}
        self._registered: dict[str, str] = {}  # instance id -> lease, written through us
        self._failing: set[str] = {"leases", "services"}  # watchers not yet in sync
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

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

    @staticmethod
    def _client(host: str, port: int, scheme: str, token: str | None,
                connections: int = 100) -> consul.aio.Consul:
        with warnings.catch_warnings():
            # py-consul passes aiohttp connector arguments aiohttp has deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            client = consul.aio.Consul(host=host, port=port, scheme=scheme,
                                       connections_limit=connections,
                                       verify=scheme == "https")
        client.token = token  # py-consul lets CONSUL_HTTP_TOKEN override; the URL wins here
        return client

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

    async def healthy(self) -> bool:
        try:
            leader = await self._call(self._writer.status.leader())
        except BackendUnavailable:
            return False
        return bool(leader) and not self._failing and self.freshness.age() <= 2.0

    @property
    def lease_count(self) -> int:
        """Live leases in the cache, for metrics."""
        now = time.time()
        return sum(1 for record in self._leases.values() if record.live(now))

    # -- calls -------------------------------------------------------------------

    async def _call(self, call: Awaitable[T], timeout: float = REQUEST_TIMEOUT) -> T:
        """Await one Consul request, turning every way of not getting an answer into
        BackendUnavailable within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                return await call
        except TimeoutError:
            raise BackendUnavailable(
                f"consul at {self.address} did not answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable(f"consul at {self.address} unreachable: {exc}") from exc
        except (ACLPermissionDenied, ACLDisabled) as exc:
            raise BackendUnavailable(
                f"consul at {self.address} refused the request (check the token): {exc}"
            ) from exc
        except ConsulException as exc:
            if isinstance(exc, BadRequest | ClientError):
                raise
            raise BackendUnavailable(f"consul at {self.address} failed: {exc}") from exc

    def _get(self, path: str) -> Awaitable[Any]:
        """GET an agent endpoint py-consul wraps without the token header."""
        headers = self._writer.prepare_headers()
        return self._writer.http.get(CB.json(), path, headers=headers)  # type: ignore[no-any-return]

    async def _node_name(self) -> str:
        info = await self._call(self._get("/v1/agent/self"))
        return str(info["Config"]["NodeName"])

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

    async def _read_lease(self, lease_id: str) -> StoredLease | None:
        _, items = await self._call(self._writer.kv.get(LEASE_PREFIX + lease_id))
        if not items:
            return None
        item = items if isinstance(items, dict) else items[0]
        try:
            return StoredLease.decode(lease_id, item.get("Value"), int(item["ModifyIndex"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed lease record %s", item.get("Key"))
            return None

    async def _live_lease(self, lease_id: str) -> StoredLease | None:
        record = self._leases.get(lease_id)
        if record is None:
            record = await self._read_lease(lease_id)
        return record if record is not None and record.live(time.time()) else None

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

        async def pass_one(instance_id: str) -> None:
            async with limit:
                # False (404): deregistered meanwhile, nothing to keep alive.
                await self._call(self._writer.agent.check.ttl_pass(CHECK_PREFIX + instance_id))

        await asyncio.gather(*(pass_one(i) for i in ids))

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
                replace_existing_checks=True,
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

    async def _deregister(self, instance_id: str) -> Instance | None:
        existing = await self._call(self._get(f"/v1/agent/service/{instance_id}"))
        instance = _from_agent(existing) if existing else None
        if instance is None:
            return None  # absent, or not ours: foreign Consul services are left alone
        await self._call(self._writer.agent.service.deregister(instance_id))
        self._registered.pop(instance_id, None)
        return instance

    async def _deregister_leases(self, lease_ids: set[str]) -> None:
        """Remove every service on this agent that belongs to one of these leases."""
        services = await self._call(self._writer.agent.services())
        doomed = [sid for sid, svc in (services or {}).items()
                  if (svc.get("Meta") or {}).get(META_LEASE) in lease_ids]
        await asyncio.gather(*(self._call(self._writer.agent.service.deregister(sid))
                               for sid in doomed))
        for sid in doomed:
            self._registered.pop(sid, None)
        for sid, lease in list(self._registered.items()):
            if lease in lease_ids:
                del self._registered[sid]

    # -- reads -----------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        if self._failing:
            raise BackendUnavailable(
                f"consul at {self.address} unreachable ({', '.join(sorted(self._failing))} "
                "watch failing)")
        return self._snapshots.build(
            (entry.instance for entries in self._services.values() for entry in entries.values()),
            self._expiry_of)

    def _remember_lease(self, record: StoredLease) -> None:
        """Merge a lease record into the cache; renewals only move expiry forward."""
        known = self._leases.get(record.id)
        if known is not None and known.expires_at > record.expires_at:
            return  # our own newer renewal has not come back through the watch yet
        if known != record:
            self._leases[record.id] = record
            # A later expiry changes what is served only once the old one has passed (its
            # instances dropped out); before that the snapshot rebuilds when it passes.
            if known is None or known.expires_at <= time.time():
                self._changed()

    def _forget_lease(self, lease_id: str) -> None:
        if self._leases.pop(lease_id, None) is not None:
            self._changed()

    # -- watches -----------------------------------------------------------------

    async def _follow(self, name: str, load: Callable[[int], Awaitable[int]],
                      index: int) -> None:
        """Repeat a blocking query forever, resetting its index after errors, as Consul says."""
        while not self._closed:
            try:
                new = await load(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable, or a reply we could not read
                if name not in self._failing:
                    log.warning("consul %s watch failing: %s", name, exc)
                    self._failing.add(name)
                    self.changes.notify()
                index = 0  # the agent may have restarted with a fresh index
                await asyncio.sleep(RETRY_DELAY)
                continue
            if name in self._failing:
                self._failing.discard(name)
                self.changes.notify()
            index = 0 if new < index else max(new, 1)

    def _blocking(self, index: int) -> dict[str, Any]:
        return {"index": index or None, "wait": f"{WATCH_WAIT:g}s"}

    def _watch_timeout(self, index: int) -> float:
        return WATCH_WAIT * 1.1 + REQUEST_TIMEOUT if index else REQUEST_TIMEOUT

    async def _load_leases(self, index: int) -> int:
        new, items = await self._call(
            self._watcher.kv.get(LEASE_PREFIX, recurse=True, index=index or None,
                                 wait=f"{LEASE_WAIT:g}s"),
            LEASE_WAIT * 1.1 + REQUEST_TIMEOUT if index else REQUEST_TIMEOUT)
        answered = time.monotonic()
        seen: dict[str, StoredLease] = {}
        for item in items or ():
            lease_id = str(item["Key"])[len(LEASE_PREFIX):]
            try:
                seen[lease_id] = StoredLease.decode(lease_id, item.get("Value"),
                                                     int(item["ModifyIndex"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed lease record %s", item.get("Key"))
        for lease_id in set(self._leases) - set(seen):
            self._forget_lease(lease_id)
        for record in seen.values():
            known = self._leases.get(record.id)
            if known is not None and known.expires_at > record.expires_at:
                continue
            if known is not None and known.expires_at == record.expires_at:
                # Our own renewal came back: learn its ModifyIndex, nothing visible changed.
                self._leases[record.id] = record
                continue
            self._remember_lease(record)
        # A blocking read that returned shows every lease record as the agent had it then.
        self.freshness.proved(answered)
        return int(new)

    async def _load_services(self, index: int) -> int:
        new, services = await self._call(
            self._watcher.catalog.services(**self._blocking(index)), self._watch_timeout(index))
        names = {name for name in (services or {}) if name != "consul"}
        for name in set(self._service_tasks) - names:
            self._service_tasks.pop(name).cancel()
            self._failing.discard(f"service {name}")
            if self._services.pop(name, None):
                self._changed()
        fresh = names - set(self._service_tasks)
        if fresh:
            indexes = await asyncio.gather(*(self._load_service(name, 0) for name in fresh))
            for name, first in zip(fresh, indexes, strict=True):
                self._service_tasks[name] = asyncio.create_task(
                    self._follow(f"service {name}", self._service_loader(name), first))
        return int(new)

    def _service_loader(self, name: str) -> Callable[[int], Awaitable[int]]:
        async def load(index: int) -> int:
            return await self._load_service(name, index)
        return load

    async def _load_service(self, name: str, index: int) -> int:
        new, nodes = await self._call(
            self._watcher.health.service(name, **self._blocking(index)),
            self._watch_timeout(index))
        known = self._services.get(name, {})
        # After an error the agent may be a fresh one whose indexes started over, so
        # a full read (index 0) rebuilds every entry instead of trusting versions.
        reusable = known if index else {}
        entries: dict[str, _Entry] = {}
        for node in nodes or ():
            service = node.get("Service") or {}
            version = _version(node)
            entry = reusable.get(str(service.get("ID")))
            if entry is None or entry.version != version:
                entry = _from_health(node, version)
            if entry is not None:
                entries[entry.instance.id] = entry
        if known != entries:
            if entries:
                self._services[name] = entries
            else:
                self._services.pop(name, None)
            self._changed()
        return int(new)

    # -- clean-up ----------------------------------------------------------------

    async def _reap_loop(self) -> None:
        """Delete lapsed lease records and the dead services they leave on this agent.

        Consul's own DeregisterCriticalServiceAfter is the backstop when no pilotfish
        process is left; this just keeps Consul tidy sooner. Every process may do it:
        deletes are check-and-set, deregistrations idempotent.
        """
        while not self._closed:
            await asyncio.sleep(REAP_PERIOD)
            try:
                await self._reap()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("consul reap skipped: %s", exc)

    async def _reap(self) -> None:
        if self.freshness.stale:
            return  # renewals may be on their way: delete nothing we cannot see being renewed
        now = time.time()
        lapsed = [r for r in self._leases.values() if r.expires_at < now - 1.0]
        for record in lapsed:
            if record.version and await self._call(self._writer.kv.delete(
                    LEASE_PREFIX + record.id, cas=record.version)):
                self.expirations += 1
            self._forget_lease(record.id)
        dead = {lease for lease in self._registered.values()
                if (r := self._leases.get(lease)) is None or not r.live(now)}
        for entries in self._services.values():
            for entry in entries.values():
                if (entry.node == self._node and entry.instance.health == "critical"
                        and entry.instance.lease not in self._leases):
                    dead.add(entry.instance.lease)
        dead |= {r.id for r in lapsed}
        if dead:
            # A lease may merely not have reached our cache yet: ask KV before deleting.
            confirmed = set()
            for lease_id in dead:
                current = await self._read_lease(lease_id)
                if current is None or not current.live(time.time()):
                    confirmed.add(lease_id)
            if confirmed:
                await self._deregister_leases(confirmed)


def _from_agent(service: Mapping[str, Any]) -> Instance | None:
    """The pilotfish instance behind an agent service definition (None if not ours)."""
    meta = dict(service.get("Meta") or {})
    lease = meta.pop(META_LEASE, None)
    if lease is None:
        return None
    health = meta.pop(META_HEALTH, "passing")
    weights = service.get("Weights") or {}
    try:
        return Instance(service=service["Service"], id=service["ID"],
                        address=service.get("Address") or "", port=int(service["Port"]),
                        lease=lease, tags=tuple(service.get("Tags") or ()), meta=meta,
                        weight=int(weights.get("Passing", 1)), health=health)
    except (InvalidField, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring consul service %s: %s", service.get("ID"), exc)
        return None


def _version(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a health entry that change when the instance does."""
    service = node.get("Service") or {}
    return (service.get("CreateIndex"), service.get("ModifyIndex"),
            (service.get("Meta") or {}).get(META_LEASE), (node.get("Node") or {}).get("Node"),
            tuple((c.get("CheckID"), c.get("Status")) for c in node.get("Checks") or ()))


def _from_health(node: Mapping[str, Any], version: tuple[Any, ...]) -> _Entry | None:
    """One /v1/health/service entry as an instance, its health folded from Consul's checks."""
    instance = _from_agent(node.get("Service") or {})
    if instance is None:
        return None
    statuses: Iterable[str] = (str(c.get("Status")) for c in node.get("Checks") or ())
    worst: Health = instance.health
    for status in statuses:
        if status == "critical":
            worst = "critical"
        elif status == "warning" and worst == "passing":
            worst = "warning"
    if worst != instance.health:
        instance = replace(instance, health=worst)
    return _Entry(instance, str((node.get("Node") or {}).get("Node", "")), version)
