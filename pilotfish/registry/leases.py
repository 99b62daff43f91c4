"""The lease handlers of the registry API: create, read, keep alive and revoke (/v1/leases)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pilotfish.catalog.interface import Catalog, UnknownLease
from pilotfish.catalog.model import Lease, ttl_seconds
from pilotfish.http.acl import ANY_WRITE, forbidden
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import json_response
from pilotfish.registry.access import AccessChecks, caller
from pilotfish.registry.bodies import LeaseBody, LeasePath, parse_body
from pilotfish.registry.calls import bounded


class LeaseHandlers:
    """The /v1/leases routes over one catalog; a lease is used only by the token holding it."""

    def __init__(self, catalog: Catalog, checks: AccessChecks, max_body: int) -> None:
        self.catalog = catalog
        self.checks = checks
        self.max_body = max_body

    async def create_lease(self, request: Request) -> Response:
        token = caller(request)
        if token is not None and not token.can_write_any():
            raise forbidden(token, ANY_WRITE, "creating leases")
        body = await parse_body(request, LeaseBody, self.max_body)
        lease = await bounded(self.catalog.create_lease(ttl_seconds(body.ttl), body.owner))
        if token is not None:
            self.checks.lease_tokens.hold(lease.id, token.name)
        return json_response(lease.to_dict(), 201)

    async def get_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self.checks.require_lease(request, lease_id)
        lease = await bounded(self.catalog.lease(lease_id))
        if lease is None:
            self.checks.lease_tokens.forget(lease_id)
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return json_response(lease.to_dict())

    async def keepalive_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self.checks.require_lease(request, lease_id)
        lease = await self.keepalive(lease_id)
        return json_response(lease.to_dict())

    async def keepalive(self, lease_id: str) -> Lease:
        """Keep the lease alive; a lease found unknown is forgotten (its holder too)."""
        try:
            return await bounded(self.catalog.keepalive(lease_id))
        except UnknownLease:
            self.checks.lease_tokens.forget(lease_id)
            raise

    async def revoke_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self.checks.require_lease(request, lease_id)
        revoked = await bounded(self.catalog.revoke(lease_id))
        self.checks.lease_tokens.forget(lease_id)
        if not revoked:
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return Response(status_code=204)

