"""The instance handlers of the registry API: register (on a lease, or on a lease of its own),
keep alive and deregister (/v1/services/{service}/instances/{id})."""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pilotfish.catalog.checks import merge_checks, unreported
from pilotfish.catalog.interface import Catalog, UnknownLease
from pilotfish.catalog.model import Instance, identifier, service_name, ttl_seconds
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import json_response
from pilotfish.registry.access import AccessChecks
from pilotfish.registry.bodies import (
    InstanceBody,
    InstancePath,
    ServicePath,
    checks_of,
    own_lease_owner,
    parse_body,
)
from pilotfish.registry.calls import bounded
from pilotfish.registry.leases import LeaseHandlers


class InstanceHandlers:
    """The instance routes over one catalog; writes need a write scope for the service."""

    def __init__(self, catalog: Catalog, checks: AccessChecks, leases: LeaseHandlers,
                 max_body: int) -> None:
        self.catalog = catalog
        self.checks = checks
        self.leases = leases
        self.max_body = max_body

    async def put_instance(self, service: ServicePath, instance_id: InstancePath,
                           request: Request) -> Response:
        token = self.checks.require_write(request, service_name(service))
        body = await parse_body(request, InstanceBody, self.max_body)
        service = service_name(service)
        identifier(instance_id, "id")
        given = body.model_fields_set
        if ("lease" in given) == ("ttl" in given):
            raise ApiError(
                400, "invalid", "give exactly one of lease or ttl: every registration expires "
                "unless kept alive", "lease" if "lease" in given else "ttl")
        fields = body.model_dump(exclude={"lease", "ttl", "checks"})
        fields["checks"] = checks_of(body.checks)
        if any(unreported(c) for c in fields["checks"]):  # keep what the app reported
            current = (await bounded(self.catalog.snapshot())).get(instance_id)
            if current is not None:
                fields["checks"] = merge_checks(current.checks, fields["checks"])
        if token is not None:  # an id registered under another service moves: write it too
            current = (await bounded(self.catalog.snapshot())).get(instance_id)
            if current is not None and current.service != service:
                self.checks.require_write(request, current.service)
        if "lease" in given:
            await self.checks.require_lease(request, body.lease)
            instance = Instance(service=service, id=instance_id, lease=body.lease, **fields)
            try:
                created = await bounded(self.catalog.register(instance))
            except UnknownLease:
                self.checks.lease_tokens.forget(body.lease)
                raise
        else:
            instance, created = await self._register_own_lease(
                service, instance_id, ttl_seconds(body.ttl), fields)
            if token is not None:
                self.checks.lease_tokens.hold(instance.lease, token.name)
        return json_response(instance.to_dict(), 201 if created else 200)

    async def _register_own_lease(
        self, service: str, instance_id: str, ttl: int, fields: dict[str, Any]
    ) -> tuple[Instance, bool]:
        """Register on a lease owned by the instance alone, reusing it while it lives."""
        Instance(service=service, id=instance_id, lease="pending", **fields)  # validate first
        owner = own_lease_owner(instance_id)
        current = (await bounded(self.catalog.snapshot())).get(instance_id)
        lease = None
        if current is not None:
            held = await bounded(self.catalog.lease(current.lease))
            if held is not None and held.owner == owner and held.ttl == ttl:
                with contextlib.suppress(UnknownLease):
                    lease = await bounded(self.catalog.keepalive(held.id))
        if lease is None:
            lease = await bounded(self.catalog.create_lease(ttl, owner))
        instance = Instance(service=service, id=instance_id, lease=lease.id, **fields)
        try:
            created = await bounded(self.catalog.register(instance))
        except BaseException:
            if current is None or current.lease != lease.id:
                await self.catalog.revoke(lease.id)  # nothing half-written: no orphan lease
            raise
        if current is not None and current.lease != lease.id:
            await self._revoke_own_lease(instance_id, current.lease)
        return instance, created

    async def _revoke_own_lease(self, instance_id: str, lease_id: str) -> None:
        """Revoke the lease the API made for this instance alone, once nothing rides on it."""
        lease = await bounded(self.catalog.lease(lease_id))
        if lease is None or lease.owner != own_lease_owner(instance_id):
            return
        snapshot = await bounded(self.catalog.snapshot())
        if not any(i.lease == lease_id for i in snapshot.instances.values()):
            await bounded(self.catalog.revoke(lease_id))

    async def keepalive_instance(self, service: ServicePath, instance_id: InstancePath,
                                 request: Request) -> Response:
        self.checks.require_write(request, service_name(service))
        instance = await self._find(service, instance_id)
        await self.checks.require_lease(request, instance.lease)
        lease = await self.leases.keepalive(instance.lease)
        return json_response(lease.to_dict())

    async def delete_instance(self, service: ServicePath, instance_id: InstancePath,
                              request: Request) -> Response:
        self.checks.require_write(request, service_name(service))
        await self._find(service, instance_id)
        removed = await bounded(self.catalog.deregister(instance_id))
        if removed is None:
            raise self._not_found(service, instance_id)
        await self._revoke_own_lease(instance_id, removed.lease)
        return Response(status_code=204)

    async def _find(self, service: str, instance_id: str) -> Instance:
        instance = (await bounded(self.catalog.snapshot())).get(instance_id)
        if instance is None or instance.service != service_name(service):
            raise self._not_found(service, instance_id)
        return instance

    @staticmethod
    def _not_found(service: str, instance_id: str) -> ApiError:
        return ApiError(404, "not_found", f"no instance {instance_id!r} in service {service!r}")
