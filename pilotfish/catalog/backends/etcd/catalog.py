"""EtcdCatalog: the catalog operations on etcd leases and transactions."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from typing import Any

import grpc
from aetcd import rpc

import pilotfish.catalog.backends.etcd.requests as requests
from pilotfish.catalog.backends.etcd.members import (
    _Held,
    _lease_number,
    _WatchEnded,
    keepalive_timeout,
    log,
    parse_url,
)
from pilotfish.catalog.backends.etcd.secure import security_from_url
from pilotfish.catalog.backends.etcd.watch import EtcdWatch
from pilotfish.catalog.backends.stored import WRITE_ATTEMPTS, StoredLease
from pilotfish.catalog.entries import ConfigEntry, decode_entry
from pilotfish.catalog.interface import BackendUnavailable, EntryConflict, UnknownLease
from pilotfish.catalog.model import Instance, Lease
from pilotfish.config import ConfigError
from pilotfish.loop import cancel_and_wait


class EtcdCatalog(EtcdWatch):
    """A catalog stored in an etcd cluster, read through a watch-fed local cache."""

    @classmethod
    async def from_url(cls, url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> EtcdCatalog:
        """etcd[s]://[user[:password]@]h1:2379[,h2:2379…]/prefix[?timeout=SECONDS]; starts the
        watch at once. A user signs in (see `secure`); etcds:// is TLS, verified with
        `ca_file` (else PILOTFISH_CA_FILE, else the system's CAs)."""
        url, security = security_from_url(url, ca_file)
        endpoints, prefix, query = parse_url(url)
        options: dict[str, float] = {}
        if "timeout" in query:
            options["call_timeout"] = float(query["timeout"][-1])
        if security.tls:
            security.channel_credentials()  # unreadable files: a ConfigError now, not later
        catalog = cls(endpoints, prefix, security=security, **options)
        try:
            await catalog.start()
        except BaseException:
            await catalog.close()
            raise
        return catalog

    async def start(self, wait: float = 3.0) -> None:
        """Begin following the prefix; waits briefly for the first listing but never fails,
        except when etcd refuses our credentials, permissions or certificates (ConfigError)."""
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._follow(), name=f"etcd-watch-{self.prefix}")
        synced = asyncio.ensure_future(self._synced.wait())
        refused = asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({synced, refused}, timeout=wait,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(synced, refused)
        if self._refusal is not None and not self._synced.is_set():
            raise ConfigError(f"etcd {self._endpoints()}: {self._refusal}")
        if not self._synced.is_set():
            log.warning("etcd %s not reachable yet (%s); serving 503 until it is",
                        self._endpoints(), self._watch_error)

    async def close(self) -> None:
        self._closed.set()
        self._snapshots.close()
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        await cancel_and_wait(self._watch_task, *self._tasks)
        self._watch_task = None
        for member in self._members:
            await member.close()

    # leases

    async def _create_lease(self, ttl: int, owner: str) -> Lease:
        started = time.monotonic()
        granted = await self._call(partial(requests.grant, ttl))
        if granted.error:
            raise BackendUnavailable(f"etcd refused a lease: {granted.error}")
        lease_id = format(granted.ID, "x")
        value = StoredLease(lease_id, ttl, owner).encode(expiry=False)
        puts = [rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self._lease_key(lease_id), value=value, lease=granted.ID)),
                rpc.RequestOp(request_put=self._expiry_put(lease_id, granted.ID, granted.TTL))]
        try:
            await self._txn([], puts, [])
        except BaseException:
            # Nothing half-written: a lease without its key is revoked (or lapses by itself).
            self._spawn(self._quiet_revoke(granted.ID))
            raise
        actual = max(ttl, int(granted.TTL))
        self._held[lease_id] = _Held(actual, started + actual)
        return Lease(id=lease_id, ttl=actual, owner=owner, expires_at=time.time() + actual)

    async def _keepalive(self, lease_id: str) -> Lease:
        number = _lease_number(lease_id)
        if number is None:
            raise UnknownLease(lease_id)
        held = self._held.get(lease_id)
        if lease_id in self._lapsed or (held is not None and self._lapsed_in_outage(held)):
            self._mark_lapsed(lease_id)
            raise UnknownLease(lease_id)
        started = time.monotonic()
        # A frozen member must be left well before the lease lapses: a keepalive comes
        # every ttl/3, so one attempt may take at most ttl/4 before the next member is tried.
        ttl_now = held.ttl if held is not None else (self._leases[lease_id].ttl
                                                      if lease_id in self._leases else 0)
        per_call = keepalive_timeout(ttl_now, self._call_timeout)
        try:
            reply = await self._call(partial(requests.keep_alive, number), per_call)
        except _WatchEnded as exc:
            raise BackendUnavailable(f"etcd {exc}") from exc
        if reply.TTL <= 0:
            self._held.pop(lease_id, None)
            raise UnknownLease(lease_id)
        put = self._expiry_put(lease_id, number, reply.TTL)
        try:
            await self._call(partial(requests.put, put), per_call)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # lapsed between the two calls
                raise UnknownLease(lease_id) from exc
            raise self._unavailable(f"keepalive: {exc.details()}") from exc
        ttl = max(2, int(reply.TTL))
        self._held[lease_id] = _Held(ttl, started + ttl)
        info = self._leases.get(lease_id)
        return Lease(id=lease_id, ttl=ttl, owner=info.owner if info else "",
                     expires_at=time.time() + ttl)

    async def _lease(self, lease_id: str) -> Lease | None:
        number = _lease_number(lease_id)
        if number is None or lease_id in self._lapsed:
            return None
        remaining, stored = await asyncio.gather(
            self._call(partial(requests.time_to_live, number)),
            self._call(partial(requests.get, self._lease_key(lease_id))))
        if remaining.TTL <= 0 or not stored.kvs:
            return None
        info = self._lease_info(lease_id, stored.kvs[0].value)
        ttl = info.ttl if info else max(2, int(remaining.grantedTTL))
        return Lease(id=lease_id, ttl=ttl, owner=info.owner if info else "",
                     expires_at=time.time() + remaining.TTL)

    async def _revoke(self, lease_id: str) -> bool:
        number = _lease_number(lease_id)
        if number is None:
            return False
        was_lapsed = lease_id in self._lapsed
        try:
            await self._call(partial(requests.revoke, number))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise self._unavailable(f"revoke: {exc.details()}") from exc
            self._held.pop(lease_id, None)
            return False
        self._held.pop(lease_id, None)
        return not was_lapsed

    # instances

    async def _register(self, instance: Instance) -> bool:
        number = _lease_number(instance.lease)
        if number is None or instance.lease in self._lapsed:
            raise UnknownLease(instance.lease)
        lease_key = self._lease_key(instance.lease)
        id_key = self._id_key(instance.id)
        value = json.dumps(instance.to_dict(), separators=(",", ":")).encode()
        cached = self._instances.get(instance.id)
        old_service = cached.service if cached is not None else None
        for _ in range(WRITE_ATTEMPTS):
            compare = [
                rpc.Compare(key=lease_key, target=rpc.Compare.CREATE,
                            result=rpc.Compare.GREATER, create_revision=0),
                self._id_compare(id_key, old_service),
            ]
            success = [
                rpc.RequestOp(request_put=rpc.PutRequest(
                    key=self._service_key(instance.service, instance.id), value=value,
                    lease=number)),
                rpc.RequestOp(request_put=rpc.PutRequest(
                    key=id_key, value=instance.service.encode(), lease=number)),
            ]
            if old_service is not None and old_service != instance.service:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                    key=self._service_key(old_service, instance.id))))
            failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=lease_key)),
                       rpc.RequestOp(request_range=rpc.RangeRequest(key=id_key))]
            try:
                reply = await self._txn(compare, success, failure)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the lease vanished in between
                    raise UnknownLease(instance.lease) from exc
                raise self._unavailable(f"register: {exc.details()}") from exc
            if reply.succeeded:
                return old_service is None
            if not reply.responses[0].response_range.kvs:
                raise UnknownLease(instance.lease)
            current = reply.responses[1].response_range.kvs
            old_service = current[0].value.decode() if current else None
        raise self._unavailable(f"register {instance.id!r}: kept racing with other writers")

    async def _deregister(self, instance_id: str) -> Instance | None:
        id_key = self._id_key(instance_id)
        cached = self._instances.get(instance_id)
        service = cached.service if cached is not None else None
        for _ in range(WRITE_ATTEMPTS):
            compare = [self._id_compare(id_key, service)]
            failure = [rpc.RequestOp(request_range=rpc.RangeRequest(key=id_key))]
            success: list[Any] = []
            if service is not None:
                success = [
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                        key=self._service_key(service, instance_id), prev_kv=True)),
                    rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=id_key)),
                ]
            try:
                reply = await self._txn(compare, success, failure)
            except grpc.aio.AioRpcError as exc:
                raise self._unavailable(f"deregister: {exc.details()}") from exc
            if reply.succeeded:
                if service is None:
                    return None
                removed = reply.responses[0].response_delete_range.prev_kvs
                return self._decode_instance(removed[0].value) if removed else cached
            current = reply.responses[0].response_range.kvs
            if not current:
                return None
            service = current[0].value.decode()
        raise self._unavailable(f"deregister {instance_id!r}: kept racing with other writers")

    # config entries: one key each, versioned by its mod_revision (0: absent, as etcd compares)

    async def _config_entry(self, name: str) -> ConfigEntry:
        try:
            reply = await self._call(partial(requests.get, self._entry_key(name)))
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(f"config entry: {exc.details()}") from exc
        if not reply.kvs:
            return ConfigEntry(name)
        return decode_entry(name, reply.kvs[0].value, reply.kvs[0].mod_revision)

    async def _put_config_entry(self, name: str, data: bytes, version: int) -> ConfigEntry:
        key = self._entry_key(name)
        compare = [rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL,
                               mod_revision=version)]
        success = [rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=data))]
        try:
            reply = await self._txn(compare, success, [])
        except grpc.aio.AioRpcError as exc:
            raise self._unavailable(f"config entry: {exc.details()}") from exc
        if not reply.succeeded:
            raise EntryConflict(name, version)
        return decode_entry(name, data, reply.header.revision)
