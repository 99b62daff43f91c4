"""The registry API's ASGI application: its routes, its OpenAPI document, how each error becomes
the one error shape (pilotfish.http.errors), and the middleware around it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pilotfish.catalog.interface import BackendUnavailable, Catalog, UnknownLease
from pilotfish.catalog.model import InvalidField
from pilotfish.http.acl import AccessPolicy, reads_catalog
from pilotfish.http.errors import ApiError
from pilotfish.http.failures import INTERNAL_BODY, LastResort
from pilotfish.http.long_polls import RETRY_AFTER, TooManyWaiting
from pilotfish.http.middleware import Middleware
from pilotfish.http.responses import json_response
from pilotfish.mesh.ca import DEFAULT_CERT_TTL, CertificateAuthority
from pilotfish.metrics import Metrics
from pilotfish.registry.access import (
    AccessChecks,
    AccessControl,
    MethodGate,
    method_not_allowed,
    path_methods,
)
from pilotfish.registry.bodies import (
    DEFAULT_MAX_BODY,
    ErrorBody,
    HealthOut,
    InstanceBody,
    InstanceOut,
    InstancesOut,
    LeaseBody,
    LeaseOut,
    ServicesOut,
    body_schema,
)
from pilotfish.registry.calls import BACKEND_TIMEOUT
from pilotfish.registry.certificates import (
    CaOut,
    CertificateBody,
    CertificateHandlers,
    CertificateOut,
)
from pilotfish.registry.checks import CheckHandlers, CheckReports, add_check_routes
from pilotfish.registry.consul.routes import consul_router
from pilotfish.registry.entries import EntryBody, EntryHandlers, EntryOut
from pilotfish.registry.instances import InstanceHandlers
from pilotfish.registry.intentions import (
    IntentionHandlers,
    IntentionsBody,
    IntentionsOut,
    RuleBody,
    RuleOut,
    inline_schema,
)
from pilotfish.registry.leases import LeaseHandlers
from pilotfish.registry.reads import CLIENT_GONE, ReadHandlers

Docs = dict[int | str, dict[str, Any]]


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_INVALID: Docs = {400: _error_doc("a field is invalid (`field` names it)"),
                  422: _error_doc("a field is malformed or missing (`field` names it)")}
_UNAVAILABLE: Docs = {503: _error_doc("the catalog backend does not answer")}
_READ: Docs = {401: _error_doc("an unknown token, or none where reads need one (--acl "
                               "default_read = false)"),
               403: _error_doc("the token lacks scope `read`")}
_WRITE: Docs = {401: _error_doc("writes need `Authorization: Bearer <token>` when the registry "
                                "has a token (or an ACL); an unknown token"),
                403: _error_doc("the token lacks a scope (`scope` names it), or the lease belongs "
                                "to another token"),
                413: _error_doc("the body is over the size limit")}
_INDEX_HEADER = {"X-Pilotfish-Index": {"description": "catalog index of this answer",
                                       "schema": {"type": "integer"}}}


def _ok(model: type[BaseModel], status: int = 200, headers: bool = False,
        description: str = "OK") -> Docs:
    doc: dict[str, Any] = {"model": model, "description": description}
    if headers:
        doc["headers"] = _INDEX_HEADER
    return {status: doc}


class RegistryApi:
    """The registry API over one catalog; `app` is the ASGI application."""

    def __init__(self, catalog: Catalog, token: str | None = None,
                 metrics: Metrics | None = None, max_body: int = DEFAULT_MAX_BODY,
                 access: AccessPolicy | None = None,
                 authority: CertificateAuthority | None = None,
                 max_cert_ttl: int = DEFAULT_CERT_TTL) -> None:
        self.catalog = catalog
        self.metrics = metrics if metrics is not None else Metrics()
        self.access = access if access is not None else AccessPolicy(token_secret=token)
        self._stopping = asyncio.Event()
        checks = AccessChecks(catalog, self.access)
        self.leases = LeaseHandlers(catalog, checks, max_body)
        self.instances = InstanceHandlers(catalog, checks, self.leases, max_body)
        self.reports = CheckReports(catalog, checks)
        self.checks = CheckHandlers(catalog, self.reports, max_body)
        self.reads = ReadHandlers(catalog, self._stopping)
        self.entries = EntryHandlers(catalog, max_body)
        self.intentions = IntentionHandlers(catalog, max_body)
        self.certificates = None if authority is None else CertificateHandlers(
            authority, checks, self.access, max_cert_ttl, max_body)
        self._describe_metrics()
        self.app = self._build()

    def stop_waiting(self) -> None:
        """Answer every pending long-poll now: the server is shutting down."""
        self._stopping.set()

    async def health(self) -> Response:  # its docstring would be its OpenAPI description
        try:
            healthy = await asyncio.wait_for(self.catalog.healthy(), BACKEND_TIMEOUT)
        except Exception:
            healthy = False
        body = {"status": "ok" if healthy else "unavailable", "backend_healthy": healthy}
        return json_response(body, 200 if healthy else 503)

    async def metrics_text(self, request: Request) -> Response:
        """GET /metrics: per-instance series only for those who may read the catalog."""
        include_instances = reads_catalog(request.scope, self.access)
        catalog = self.catalog
        with contextlib.suppress(Exception):
            snapshot = await asyncio.wait_for(catalog.snapshot(), BACKEND_TIMEOUT)
            self.metrics.set("pilotfish_registrations", len(snapshot))
            self.metrics.set("pilotfish_catalog_index", snapshot.index)
        if catalog.lease_count is not None:
            self.metrics.set("pilotfish_leases", catalog.lease_count)
        self.metrics.set("pilotfish_lease_expirations_total", catalog.expirations)
        return Response(self.metrics.render(include_instances),
                        media_type="text/plain; version=0.0.4")

    # wiring

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("pilotfish_http_requests_total", "counter",
                   "API requests by status code (499: the client left before the answer).")
        m.describe("pilotfish_registrations", "gauge", "Live instances in the catalog.")
        m.describe("pilotfish_leases", "gauge", "Live leases (where the backend can count them).")
        m.describe("pilotfish_lease_expirations_total", "counter", "Leases that lapsed.")
        m.describe("pilotfish_catalog_index", "gauge", "Index of the last catalog change.")

    def _build(self) -> FastAPI:
        # /v1/docs is the status UI's (pilotfish.ui.docs): Swagger UI from the package, offline
        app = FastAPI(title="pilotfish registry", version="1", docs_url=None,
                      openapi_url="/v1/openapi.json", redoc_url=None)
        r = app.router
        leases, instances, reads = self.leases, self.instances, self.reads
        lost_lease: Docs = {404: _error_doc("the lease is unknown or has lapsed")}
        lost_instance: Docs = {404: _error_doc("no such instance in that service")}
        lease = _ok(LeaseOut)
        r.add_api_route("/v1/leases", leases.create_lease, methods=["POST"], status_code=201,
                        openapi_extra=body_schema(LeaseBody),
                        responses={**_ok(LeaseOut, 201, description="granted"), **_INVALID,
                                   **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}", leases.get_lease, methods=["GET"],
                        responses={**lease, **lost_lease, **_INVALID, **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}/keepalive", leases.keepalive_lease, methods=["PUT"],
                        responses={**lease, **lost_lease, **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}", leases.revoke_lease, methods=["DELETE"],
                        status_code=204,
                        responses={204: {"description": "revoked, with every instance on it"},
                                   **lost_lease, **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/services", reads.list_services, methods=["GET"],
                        responses={**_ok(ServicesOut, headers=True), **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/services/{service}", reads.get_service, methods=["GET"],
                        responses={**_ok(InstancesOut, headers=True), **_INVALID,
                                   **_READ, **_UNAVAILABLE})
        instance_path = "/v1/services/{service}/instances/{instance_id}"
        r.add_api_route(instance_path, instances.put_instance, methods=["PUT"],
                        openapi_extra=body_schema(InstanceBody),
                        responses={**_ok(InstanceOut, description="updated"),
                                   **_ok(InstanceOut, 201, description="registered"), **lost_lease,
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route(instance_path, instances.delete_instance, methods=["DELETE"],
                        status_code=204,
                        responses={204: {"description": "deregistered"}, **lost_instance,
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route(instance_path + "/keepalive", instances.keepalive_instance, methods=["PUT"],
                        responses={**lease, 404: _error_doc("no such instance, or its lease "
                                                            "lapsed"),
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        add_check_routes(app, self.checks, {
            **_ok(InstanceOut, description="reported"), **_INVALID, **_WRITE, **_UNAVAILABLE,
            404: _error_doc("no such instance or check, or its lease lapsed")})
        r.add_api_route("/v1/catalog", reads.get_catalog, methods=["GET"],
                        responses={**_ok(InstancesOut, headers=True), **_INVALID,
                                   **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/health", self.health, methods=["GET"],
                        responses={**_ok(HealthOut),
                                   503: {"model": HealthOut,
                                         "description": "the backend does not answer"}})
        r.add_api_route("/metrics", self.metrics_text, methods=["GET"], include_in_schema=False)
        self._mesh_routes(app)
        if self.certificates is not None:
            r.add_api_route("/v1/mesh/certificates", self.certificates.issue, methods=["POST"],
                            status_code=201, openapi_extra=body_schema(CertificateBody),
                            responses={**_ok(CertificateOut, 201, description="signed"),
                                       **_INVALID, **_WRITE})
            r.add_api_route("/v1/mesh/ca", self.certificates.roots, methods=["GET"],
                            responses={**_ok(CaOut), **_READ})
        app.include_router(consul_router(self.catalog, self._stopping, self.reports))

        _answer_errors(app)
        app_with_acl = MethodGate(AccessControl(app, self.access), app)
        return RequestCounter(LastResort(app_with_acl), self.metrics)  # type: ignore[return-value]

    def _mesh_routes(self, app: FastAPI) -> None:
        """Config entries and intentions: read with scope read, changed with admin."""
        r, entries, intentions = app.router, self.entries, self.intentions
        conflict: Docs = {409: _error_doc("the entry is no longer at `version`: read it again")}
        admin: Docs = {**_WRITE, 403: _error_doc("the token lacks scope `admin`")}
        r.add_api_route("/v1/config/{name}", entries.get_entry, methods=["GET"],
                        responses={**_ok(EntryOut), **_INVALID, **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/config/{name}", entries.put_entry, methods=["PUT"],
                        openapi_extra=body_schema(EntryBody),
                        responses={**_ok(EntryOut), **_INVALID, **admin, **conflict,
                                   **_UNAVAILABLE})
        r.add_api_route("/v1/intentions", intentions.list_intentions, methods=["GET"],
                        responses={**_ok(IntentionsOut), **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/intentions", intentions.replace_intentions, methods=["PUT"],
                        openapi_extra=inline_schema(IntentionsBody),
                        responses={**_ok(IntentionsOut), **_INVALID, **admin, **conflict,
                                   **_UNAVAILABLE})
        rule_path = "/v1/intentions/{source}/{destination}"
        r.add_api_route(rule_path, intentions.put_rule, methods=["PUT"],
                        openapi_extra=body_schema(RuleBody),
                        responses={**_ok(RuleOut, description="updated"),
                                   **_ok(RuleOut, 201, description="added"), **_INVALID,
                                   **admin, **_UNAVAILABLE})
        r.add_api_route(rule_path, intentions.delete_rule, methods=["DELETE"], status_code=204,
                        responses={204: {"description": "removed"},
                                   404: _error_doc("no intention for that pair"), **_INVALID,
                                   **admin, **_UNAVAILABLE})


def _answer_errors(app: FastAPI) -> None:
    """Answer every exception a handler raises in the one error shape."""

    @app.exception_handler(ApiError)  # Denied too: 401 and write-scope 403s
    async def api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(InvalidField)
    async def invalid_field(_: Request, exc: InvalidField) -> Response:
        return ApiError(400, "invalid", str(exc), exc.field).response()

    @app.exception_handler(UnknownLease)
    async def unknown_lease(_: Request, exc: UnknownLease) -> Response:
        return ApiError(404, "unknown_lease", str(exc), "lease").response()

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> Response:
        return ApiError(503, "unavailable", f"registry backend unavailable: {exc}").response()

    @app.exception_handler(TooManyWaiting)
    async def too_many_waiting(_: Request, exc: TooManyWaiting) -> Response:
        response = ApiError(503, "unavailable", str(exc)).response()
        response.headers["Retry-After"] = str(RETRY_AFTER)
        response.headers["Connection"] = "close"  # its slot goes to someone else
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_GONE)  # nobody to send it to; only counted

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return method_not_allowed(request.scope, path_methods(app, request.scope) or [])
        if exc.status_code == 404:
            return ApiError(404, "not_found", f"no such path: {request.url.path}").response()
        return ApiError(exc.status_code, "invalid", str(exc.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        parts = [str(p) for p in first["loc"] if p not in ("body", "query", "path")]
        if "[key]" in parts:  # a bad key names its object, not itself
            parts = parts[:parts.index("[key]") - 1]
        field = ".".join(parts)
        message = f"{field or 'body'}: {first['msg']}"
        return ApiError(422, "invalid", message, field or None).response()

    @app.exception_handler(Exception)
    async def unexpected(_: Request, __: Exception) -> Response:
        # answered here as JSON; Starlette re-raises it, and LastResort logs one line
        return Response(INTERNAL_BODY, status_code=500, media_type="application/json")


class RequestCounter(Middleware):
    """Counts HTTP responses by status for /metrics, without wrapping bodies."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.inc("pilotfish_http_requests_total", status=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counted)
