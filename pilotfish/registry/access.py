"""Who may do what on the registry API: the caller's token (AccessControl, for every request),
the methods a path takes (MethodGate, before any token is looked at), and what the handlers
check themselves (AccessChecks: write scopes per service, and lease ownership)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from pilotfish.catalog.interface import Catalog
from pilotfish.http.acl import (
    ADMIN,
    WRITE,
    AccessPolicy,
    Denied,
    Token,
    forbidden,
    presented_token,
)
from pilotfish.http.errors import ApiError
from pilotfish.http.middleware import Middleware
from pilotfish.registry.calls import bounded
from pilotfish.registry.consul.dialect import (
    consul_denied,
    consul_method_not_allowed,
    is_consul_path,
)

OPEN_PATHS = frozenset({"/metrics", "/v1/health", "/v1/openapi.json"})
READ_METHODS = frozenset({"GET", "HEAD"})
CALLER = "pilotfish.caller"
LEASE_PATHS = "/v1/leases/"


def caller(request: Request) -> Token | None:
    """The token the AccessControl middleware found (None: the API is open, or anonymous)."""
    token: Token | None = request.scope.get(CALLER)
    return token


class AccessControl(Middleware):
    """Identifies the caller's token for every request and answers 401 / read-scope 403 itself.

    Write scopes and lease ownership depend on the path and body: the handlers check those.
    `/metrics`, `/v1/health` and the OpenAPI document stay open.
    """

    def __init__(self, app: ASGIApp, access: AccessPolicy) -> None:
        super().__init__(app)
        self.access = access

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.access.enabled or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            scope[CALLER] = self.access.authenticate(
                presented_token(scope), write=scope["method"] not in READ_METHODS,
                needs_read=not scope["path"].startswith(LEASE_PATHS))  # those: by ownership
        except Denied as exc:
            response = consul_denied(exc) if is_consul_path(scope["path"]) else exc.response()
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The API routes, also those of included routers (which newer FastAPI keeps apart)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(included.routes)  # included without a prefix (app.py)


def path_methods(app: FastAPI, scope: Scope) -> list[str] | None:
    """Every method the routes on this path take (None: no route has this path)."""
    methods: set[str] | None = None
    for route in _api_routes(app.router.routes):
        match, _ = route.matches({**scope, "method": ""})
        if match != Match.NONE:
            methods = (methods or set()) | (route.methods or set())
    return None if methods is None else sorted(methods)


def method_not_allowed(scope: Scope, allowed: list[str]) -> Response:
    """405 with `Allow`: JSON on pilotfish's paths, plain text (as Consul) on Consul's."""
    method, listed = scope.get("method", ""), ", ".join(allowed)
    if is_consul_path(scope.get("path", "")):
        response = consul_method_not_allowed(method)
    else:
        response = ApiError(405, "method_not_allowed",
                            f"{method} is not allowed here; use {listed}").response()
    response.headers["Allow"] = listed
    return response


class MethodGate(Middleware):
    """405 for a method the path's routes do not take, before access control looks at it.

    Without it an ACL answers `PUT /v1/catalog/services` with 401 "writes need a token", as if
    a token could make it work.
    """

    def __init__(self, app: ASGIApp, routes: FastAPI) -> None:
        super().__init__(app)
        self.routes = routes

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = path_methods(self.routes, scope)
        if allowed is not None and scope["method"] not in allowed:
            await method_not_allowed(scope, allowed)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class LeaseTokens:
    """Which token created each lease (in this API process), so only it (or admin) may use it.

    Entries go when a lease is revoked or found lapsed; a cap keeps a flood of leases that are
    never touched again from growing it without bound (the oldest record is dropped: that
    lease falls back to the claim rule).
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._holders: dict[str, str] = {}

    def hold(self, lease_id: str, token_name: str) -> None:
        """Record that `token_name` holds `lease_id`."""
        self._holders.pop(lease_id, None)
        self._holders[lease_id] = token_name
        if len(self._holders) > self.limit:
            self._holders.pop(next(iter(self._holders)))

    def holder(self, lease_id: str) -> str | None:
        """The name of the token holding the lease, if known."""
        return self._holders.get(lease_id)

    def forget(self, lease_id: str) -> None:
        """The lease is gone."""
        self._holders.pop(lease_id, None)

    def __len__(self) -> int:
        return len(self._holders)


class AccessChecks:
    """What the handlers check themselves, the middleware having answered 401s and read-scope
    403s: write scopes per service, and who holds each lease."""

    def __init__(self, catalog: Catalog, access: AccessPolicy) -> None:
        self.catalog = catalog
        self.access = access
        self.lease_tokens = LeaseTokens()

    def require_write(self, request: Request, service: str) -> Token | None:
        """The caller, who must hold write:<a glob matching service> (or admin)."""
        token = caller(request)
        if token is not None and not token.can_write(service):
            raise forbidden(token, f"{WRITE}{service}", f"writes to service {service!r}")
        return token

    async def require_lease(self, request: Request, lease_id: str) -> Token | None:
        """The caller, who must hold the lease (have created it) or be admin.

        A lease this process has no record of (made before it started, or by another API
        process on the same backend) is claimed by the first token whose write scopes cover
        every instance on it: no token gains a lease holding anything it could not write.
        """
        token = caller(request)
        if token is None and self.access.enabled:  # a read with default_read, no token
            raise Denied(401, "leases are read only by the token that holds them")
        if token is None or token.admin:
            return token
        holder = self.lease_tokens.holder(lease_id)
        if holder == token.name:
            return token
        if holder is None:
            snapshot = await bounded(self.catalog.snapshot())
            services = {i.service for i in snapshot.instances.values() if i.lease == lease_id}
            if token.can_write_any() and all(token.can_write(s) for s in services):
                self.lease_tokens.hold(lease_id, token.name)
                return token
        raise forbidden(token, ADMIN, f"lease {lease_id!r} belongs to another token")
