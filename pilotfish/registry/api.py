"""The REST API (/v1) over a catalog: leases, instances, blocking reads, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import time
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pilotfish.metrics import Metrics
from pilotfish.registry.catalog import BackendUnavailable, Catalog, Snapshot, UnknownLease
from pilotfish.registry.model import Instance, InvalidField, identifier, service_name, ttl_seconds

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
BACKEND_TIMEOUT = 5.0
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class ApiError(Exception):
    """An error answered as JSON: {"error": message, "code": code, "field": field?}."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


class LeaseBody(BaseModel):
    """POST /v1/leases."""

    model_config = ConfigDict(extra="forbid")
    ttl: StrictInt | float
    owner: StrictStr = ""


class InstanceBody(BaseModel):
    """PUT /v1/services/{service}/instances/{id}: the lease, or a ttl for a lease of its own."""

    model_config = ConfigDict(extra="forbid")
    address: StrictStr
    port: StrictInt
    tags: list[StrictStr] = Field(default_factory=list)
    meta: dict[str, StrictStr] = Field(default_factory=dict)
    weight: StrictInt = 1
    health: Literal["passing", "warning", "critical"] = "passing"
    lease: StrictStr | None = None
    ttl: StrictInt | float | None = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response without a serialization pass through pydantic."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def parse_body(request: Request, model: type[B]) -> B:
    """Parse a JSON body whatever its Content-Type (curl -d sends form encoding)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": {"required": True, **schema}}


def parse_wait(value: str | None) -> float:
    """Parse a Consul-style duration ("30s", "500ms", "5m", "10"), capped at 10 minutes."""
    if value is None:
        return DEFAULT_WAIT
    match = _DURATION.match(value.strip())
    if not match:
        raise ApiError(400, "invalid", f"wait: {value!r} is not a duration like 30s", "wait")
    return min(float(match.group(1)) * _UNITS[match.group(2)], MAX_WAIT)


def _own_owner(instance_id: str) -> str:
    return f"instance:{instance_id}"


class RegistryApi:
    """Route handlers bound to one catalog; `app` is the ASGI application."""

    def __init__(self, catalog: Catalog, token: str | None = None,
                 metrics: Metrics | None = None) -> None:
        self.catalog = catalog
        self.metrics = metrics if metrics is not None else Metrics()
        self._encoded_catalog: tuple[int, bytes] = (-1, b"")
        self._stopping = asyncio.Event()
        self._describe_metrics()
        self.app = self._build(token)

    async def _call(self, call: Awaitable[T]) -> T:
        """A catalog call that answers 503 (through the BackendUnavailable handler) when slow."""
        try:
            return await asyncio.wait_for(call, BACKEND_TIMEOUT)
        except TimeoutError:
            raise BackendUnavailable(f"no answer within {BACKEND_TIMEOUT:g}s") from None

    # leases

    async def create_lease(self, request: Request) -> Response:
        body = await parse_body(request, LeaseBody)
        lease = await self._call(self.catalog.create_lease(ttl_seconds(body.ttl), body.owner))
        return json_response(lease.to_dict(), 201)

    async def get_lease(self, lease_id: str) -> Response:
        lease = await self._call(self.catalog.lease(lease_id))
        if lease is None:
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return json_response(lease.to_dict())

    async def keepalive_lease(self, lease_id: str) -> Response:
        lease = await self._call(self.catalog.keepalive(lease_id))
        return json_response(lease.to_dict())

    async def revoke_lease(self, lease_id: str) -> Response:
        if not await self._call(self.catalog.revoke(lease_id)):
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return Response(status_code=204)

    # instances

    async def put_instance(self, service: str, instance_id: str, request: Request) -> Response:
        body = await parse_body(request, InstanceBody)
        service = service_name(service)
        identifier(instance_id, "id")
        if (body.lease is None) == (body.ttl is None):
            raise ApiError(
                400, "invalid", "give exactly one of lease or ttl: every registration expires "
                "unless kept alive", "ttl" if body.lease is None else "lease")
        fields = body.model_dump(exclude={"lease", "ttl"})
        if body.lease is not None:
            instance = Instance(service=service, id=instance_id, lease=body.lease, **fields)
            created = await self._call(self.catalog.register(instance))
        else:
            instance, created = await self._register_own_lease(
                service, instance_id, ttl_seconds(body.ttl), fields)
        return json_response(instance.to_dict(), 201 if created else 200)

    async def _register_own_lease(
        self, service: str, instance_id: str, ttl: int, fields: dict[str, Any]
    ) -> tuple[Instance, bool]:
        """Register on a lease owned by the instance alone, reusing it while it lives."""
        Instance(service=service, id=instance_id, lease="pending", **fields)  # validate first
        owner = _own_owner(instance_id)
        current = (await self._call(self.catalog.snapshot())).get(instance_id)
        lease = None
        if current is not None:
            held = await self._call(self.catalog.lease(current.lease))
            if held is not None and held.owner == owner and held.ttl == ttl:
                with contextlib.suppress(UnknownLease):
                    lease = await self._call(self.catalog.keepalive(held.id))
        if lease is None:
            lease = await self._call(self.catalog.create_lease(ttl, owner))
        instance = Instance(service=service, id=instance_id, lease=lease.id, **fields)
        try:
            created = await self._call(self.catalog.register(instance))
        except BaseException:
            if current is None or current.lease != lease.id:
                await self.catalog.revoke(lease.id)  # nothing half-written: no orphan lease
            raise
        if current is not None and current.lease != lease.id:
            previous = await self._call(self.catalog.lease(current.lease))
            if previous is not None and previous.owner == owner:
                await self._call(self.catalog.revoke(previous.id))
        return instance, created

    async def keepalive_instance(self, service: str, instance_id: str) -> Response:
        instance = await self._find(service, instance_id)
        lease = await self._call(self.catalog.keepalive(instance.lease))
        return json_response(lease.to_dict())

    async def delete_instance(self, service: str, instance_id: str) -> Response:
        await self._find(service, instance_id)
        if await self._call(self.catalog.deregister(instance_id)) is None:
            raise self._not_found(service, instance_id)
        return Response(status_code=204)

    async def _find(self, service: str, instance_id: str) -> Instance:
        instance = (await self._call(self.catalog.snapshot())).get(instance_id)
        if instance is None or instance.service != service.lower():
            raise self._not_found(service, instance_id)
        return instance

    @staticmethod
    def _not_found(service: str, instance_id: str) -> ApiError:
        return ApiError(404, "not_found", f"no instance {instance_id!r} in service {service!r}")

    # reads

    async def list_services(self) -> Response:
        snapshot = await self._call(self.catalog.snapshot())
        services = {name: len(group) for name, group in snapshot.by_service().items()}
        return json_response(
            {"index": snapshot.index, "services": services},
            headers={"X-Pilotfish-Index": str(snapshot.index)},
        )

    async def get_service(
        self, service: str, tag: str | None = None, index: int | None = None,
        wait: str | None = None,
    ) -> Response:
        service = service_name(service)
        wait_seconds = parse_wait(wait)
        snapshot = await self._call(self.catalog.snapshot())
        if index is not None and index == snapshot.index:
            snapshot = await self._block(snapshot, service, tag, wait_seconds)
        instances = [i.to_dict() for i in snapshot.service(service, tag)]
        return json_response(
            {"index": snapshot.index, "instances": instances},
            headers={"X-Pilotfish-Index": str(snapshot.index)},
        )

    async def get_catalog(self, index: int | None = None, wait: str | None = None) -> Response:
        """Every live instance; with `index`, blocks until the catalog moves past it."""
        wait_seconds = parse_wait(wait)
        snapshot = await self._call(self.catalog.snapshot())
        if index is not None and index == snapshot.index:
            snapshot = await self._watch(index, wait_seconds)
        return Response(self._catalog_body(snapshot), media_type="application/json",
                        headers={"X-Pilotfish-Index": str(snapshot.index)})

    def _catalog_body(self, snapshot: Snapshot) -> bytes:
        """The /v1/catalog body, encoded once per snapshot however many followers ask."""
        if self._encoded_catalog[0] != snapshot.index:
            instances = [i.to_dict() for i in snapshot.instances.values()]
            body = json.dumps({"index": snapshot.index, "instances": instances},
                              separators=(",", ":")).encode()
            self._encoded_catalog = (snapshot.index, body)
        return self._encoded_catalog[1]

    async def _block(self, seen: Snapshot, service: str, tag: str | None, wait: float) -> Snapshot:
        """Wait until this service's answer changes or `wait` elapses (a Consul-style long-poll)."""
        before = seen.service(service, tag)
        deadline = time.monotonic() + wait
        snapshot = seen
        while (remaining := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            snapshot = await self._watch(snapshot.index, remaining)
            if snapshot.service(service, tag) != before:
                break
        return snapshot

    async def _watch(self, index: int, wait: float) -> Snapshot:
        """catalog.watch for a long-poll, cut short when the server is stopping."""
        watch = asyncio.ensure_future(self.catalog.watch(index, wait))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({watch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not watch.done():
            watch.cancel()
            return await self._call(self.catalog.snapshot())
        return watch.result()

    def stop_waiting(self) -> None:
        """Answer every pending long-poll now: the server is shutting down."""
        self._stopping.set()

    async def health(self) -> Response:
        try:
            healthy = await asyncio.wait_for(self.catalog.healthy(), BACKEND_TIMEOUT)
        except Exception:
            healthy = False
        body = {"status": "ok" if healthy else "unavailable", "backend_healthy": healthy}
        return json_response(body, 200 if healthy else 503)

    async def metrics_text(self) -> Response:
        catalog = self.catalog
        with contextlib.suppress(Exception):
            snapshot = await asyncio.wait_for(catalog.snapshot(), BACKEND_TIMEOUT)
            self.metrics.set("pilotfish_registrations", len(snapshot))
            self.metrics.set("pilotfish_catalog_index", snapshot.index)
        if catalog.lease_count is not None:
            self.metrics.set("pilotfish_leases", catalog.lease_count)
        self.metrics.set("pilotfish_lease_expirations_total", catalog.expirations)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # wiring

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("pilotfish_http_requests_total", "counter", "API requests by status code.")
        m.describe("pilotfish_registrations", "gauge", "Live instances in the catalog.")
        m.describe("pilotfish_leases", "gauge", "Live leases (where the backend can count them).")
        m.describe("pilotfish_lease_expirations_total", "counter", "Leases that lapsed.")
        m.describe("pilotfish_catalog_index", "gauge", "Index of the last catalog change.")

    def _build(self, token: str | None) -> FastAPI:
        app = FastAPI(title="pilotfish registry", version="1", docs_url="/v1/docs",
                      openapi_url="/v1/openapi.json", redoc_url=None)
        r = app.router
        r.add_api_route("/v1/leases", self.create_lease, methods=["POST"], status_code=201,
                        openapi_extra=_body_schema(LeaseBody))
        r.add_api_route("/v1/leases/{lease_id}", self.get_lease, methods=["GET"])
        r.add_api_route("/v1/leases/{lease_id}/keepalive", self.keepalive_lease, methods=["PUT"])
        r.add_api_route("/v1/leases/{lease_id}", self.revoke_lease, methods=["DELETE"],
                        status_code=204)
        r.add_api_route("/v1/services", self.list_services, methods=["GET"])
        r.add_api_route("/v1/services/{service}", self.get_service, methods=["GET"])
        instance_path = "/v1/services/{service}/instances/{instance_id}"
        r.add_api_route(instance_path, self.put_instance, methods=["PUT"],
                        openapi_extra=_body_schema(InstanceBody))
        r.add_api_route(instance_path, self.delete_instance, methods=["DELETE"], status_code=204)
        r.add_api_route(instance_path + "/keepalive", self.keepalive_instance, methods=["PUT"])
        r.add_api_route("/v1/catalog", self.get_catalog, methods=["GET"])
        r.add_api_route("/v1/health", self.health, methods=["GET"])
        r.add_api_route("/metrics", self.metrics_text, methods=["GET"], include_in_schema=False)
        from pilotfish.registry.consul.routes import consul_router  # Consul's read API (issue 14)
        app.include_router(consul_router(self.catalog, token, self._stopping))

        @app.exception_handler(ApiError)
        async def api_error(_: Request, exc: ApiError) -> Response:
            return _error(exc.status, exc.code, exc.message, exc.field)

        @app.exception_handler(InvalidField)
        async def invalid_field(_: Request, exc: InvalidField) -> Response:
            return _error(400, "invalid", str(exc), exc.field)

        @app.exception_handler(UnknownLease)
        async def unknown_lease(_: Request, exc: UnknownLease) -> Response:
            return _error(404, "unknown_lease", str(exc), "lease")

        @app.exception_handler(BackendUnavailable)
        async def unavailable(_: Request, exc: BackendUnavailable) -> Response:
            return _error(503, "unavailable", f"registry backend unavailable: {exc}")

        @app.exception_handler(RequestValidationError)
        async def bad_request(_: Request, exc: RequestValidationError) -> Response:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
            field = ".".join(str(p) for p in first["loc"] if p not in ("body", "query", "path"))
            return _error(422, "invalid", f"{field or 'body'}: {first['msg']}", field or None)

        return RequestCounter(BearerToken(app, token), self.metrics)  # type: ignore[return-value]


def _error(status: int, code: str, message: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"error": message, "code": code}
    if field:
        body["field"] = field
    return json_response(body, status)


class BearerToken:
    """Refuses writes without `Authorization: Bearer <token>` when a token is configured."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is not None and scope["type"] == "http" and (
            scope["method"] in WRITE_METHODS
        ):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error(401, "unauthorized", "writes need Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RequestCounter:
    """Counts HTTP responses by status for /metrics, without wrapping bodies."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.inc("pilotfish_http_requests_total", status=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counted)
