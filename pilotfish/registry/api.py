"""The REST API (/v1) over a catalog: leases, instances, blocking reads, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Iterable, Iterator
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pilotfish.catalog.interface import BackendUnavailable, Catalog, Snapshot, UnknownLease
from pilotfish.catalog.model import (
    ID_PATTERN,
    MAX_META,
    MAX_META_VALUE,
    MAX_TAGS,
    MAX_TTL,
    META_KEY_PATTERN,
    MIN_TTL,
    OWNER_PATTERN,
    PRIORITY_KEY,
    PRIORITY_PATTERN,
    SERVICE_PATTERN,
    TAG_PATTERN,
    UNUSABLE_ADDRESS_PATTERNS,
    Instance,
    InvalidField,
    Lease,
    identifier,
    ip_literal,
    service_name,
    ttl_seconds,
)
from pilotfish.http.acl import (
    ADMIN,
    ANY_WRITE,
    WRITE,
    AccessPolicy,
    Denied,
    Token,
    forbidden,
    presented_token,
    reads_catalog,
)
from pilotfish.http.errors import CODES, ApiError, body_too_large
from pilotfish.http.failures import INTERNAL_BODY, LastResort
from pilotfish.http.long_polls import RETRY_AFTER, TooManyWaiting, slot_of, waiting
from pilotfish.http.responses import json_response
from pilotfish.metrics import Metrics

T = TypeVar("T")
B = TypeVar("B", bound=BaseModel)

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
BACKEND_TIMEOUT = 5.0
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
DEFAULT_MAX_BODY = 64 * 1024
CLIENT_GONE = 499  # nginx's "client closed request": counted, never sent
WAIT_PATTERN = r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m)?"
_DURATION = re.compile(WAIT_PATTERN)
_INDEX = re.compile(r"[0-9]{1,19}")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def _anchored(pattern: str) -> str:
    """A JSON-Schema pattern (searched, ECMA `$`) that matches only the whole value."""
    return f"^{pattern}$"


def _no_default(schema: dict[str, Any]) -> None:
    """Drop a placeholder default from the published schema: absent means absent."""
    schema.pop("default", None)


def _whole(value: object) -> object:
    """JSON Schema counts 80.0 as an integer; so do we."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


ID = _anchored(ID_PATTERN)
Whole = Annotated[StrictInt, BeforeValidator(_whole)]
Ttl = Annotated[StrictFloat, Field(ge=MIN_TTL, le=MAX_TTL, multiple_of=1,
                                   description="seconds, a whole number")]


def _address(value: str) -> str:
    """An instance address as the model checks it: refused here, it is a 422 naming it."""
    try:
        return ip_literal(value)
    except InvalidField as exc:
        raise PydanticCustomError("address", exc.message) from None


class LeaseBody(BaseModel):
    """POST /v1/leases."""

    model_config = ConfigDict(extra="forbid")
    ttl: Ttl
    owner: StrictStr = Field(default="", pattern=_anchored(OWNER_PATTERN))


class InstanceBody(BaseModel):
    """PUT /v1/services/{service}/instances/{id}: the lease, or a ttl for a lease of its own."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["lease"]}, {"required": ["ttl"]}]})
    address: Annotated[StrictStr, AfterValidator(_address)] = Field(
        description="an IPv4 or IPv6 literal clients can connect to: not unspecified, "
                    "broadcast or multicast (nor their IPv4-mapped forms)",
        json_schema_extra={
            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
            "not": {"anyOf": [{"pattern": p} for p in UNUSABLE_ADDRESS_PATTERNS]}})
    port: Whole = Field(ge=1, le=65535)
    tags: list[Annotated[StrictStr, Field(pattern=_anchored(TAG_PATTERN))]] = Field(
        default_factory=list, max_length=MAX_TAGS)
    meta: dict[Annotated[StrictStr, Field(pattern=_anchored(META_KEY_PATTERN))],
               Annotated[StrictStr, Field(max_length=MAX_META_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_META, json_schema_extra={
            "additionalProperties": False, "properties": {
            PRIORITY_KEY: {"type": "string", "pattern": _anchored(PRIORITY_PATTERN),
                           "description": "SRV priority in DNS (default 1)"}}})
    weight: Whole = Field(default=1, ge=1, le=65535)
    health: Literal["passing", "warning", "critical"] = "passing"
    lease: StrictStr = Field(default="", pattern=ID, json_schema_extra=_no_default)
    ttl: Ttl = Field(default=0.0, json_schema_extra=_no_default)


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    code: str = Field(json_schema_extra={"enum": list(CODES)},
                      description="one of the codes of every pilotfish HTTP surface")
    field: str | None = Field(default=None, json_schema_extra=_no_default)
    token: str | None = Field(default=None, json_schema_extra=_no_default,
                              description="403: the name of the token refused")
    scope: str | None = Field(default=None, json_schema_extra=_no_default,
                              description="403: the scope the token lacks")


class LeaseOut(BaseModel):
    """A lease as the API shows it."""

    id: str
    ttl: int
    owner: str
    expires_at: float


class InstanceOut(BaseModel):
    """An instance as the API shows it."""

    service: str
    id: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weight: int
    health: Literal["passing", "warning", "critical"]
    lease: str


class InstancesOut(BaseModel):
    """GET /v1/services/{service} and /v1/catalog."""

    index: int
    instances: list[InstanceOut]


class ServicesOut(BaseModel):
    """GET /v1/services."""

    index: int
    services: dict[str, int]


class HealthOut(BaseModel):
    """GET /v1/health."""

    status: Literal["ok", "unavailable"]
    backend_healthy: bool


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


async def parse_body(request: Request, model: type[B], limit: int = DEFAULT_MAX_BODY) -> B:
    """Parse a JSON body whatever its Content-Type (curl -d sends form encoding)."""
    raw = await read_body(request, limit)
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
    match = _DURATION.fullmatch(value)
    if not match:
        raise ApiError(400, "invalid", f"wait: {value!r} is not a duration like 30s", "wait")
    return min(float(match.group(1)) * _UNITS[match.group(2)], MAX_WAIT)


def parse_index(value: object) -> object:
    """A catalog index in plain ASCII digits; anything else is left for the int check to refuse."""
    if isinstance(value, str) and not _INDEX.fullmatch(value):
        raise ValueError("must be a whole number in ASCII digits")
    return value


async def until_disconnected(request: Request) -> None:
    """Return once the client has gone away (its request body, if any, already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _own_owner(instance_id: str) -> str:
    return f"instance:{instance_id}"


ServicePath = Annotated[str, Path(pattern=_anchored(SERVICE_PATTERN),
                                  description="a DNS label, matched case-insensitively")]
InstancePath = Annotated[str, Path(pattern=ID)]
LeasePath = Annotated[str, Path(pattern=ID)]
IndexQuery = Annotated[int | None, BeforeValidator(parse_index), WithJsonSchema(
    {"type": "integer", "minimum": 0, "maximum": 10**19 - 1}), Query(
    description="block until the answer moves past this X-Pilotfish-Index")]
WaitQuery = Annotated[str | None, WithJsonSchema(  # parse_wait checks it: 400 naming `wait`
    {"type": "string", "pattern": _anchored(WAIT_PATTERN)}), Query(
    description="at most this long: 30s, 500ms, 5m (cap 10m)")]


Docs = dict[int | str, dict[str, Any]]


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_INVALID: Docs = {400: _error_doc("a field is invalid (`field` names it)"),
            422: _error_doc("a field is malformed or missing (`field` names it)")}
_UNAVAILABLE: Docs = {503: _error_doc("the catalog backend does not answer")}
_READ: Docs = {401: _error_doc("an unknown token, or none where reads need one (--acl "
                               "default_read = false)"),
               403: _error_doc("the token lacks scope `read`")}
_WRITE: Docs = {401: _error_doc("writes need `Authorization: Bearer <token>` when the registry has "
                          "a token (or an ACL); an unknown token"),
          403: _error_doc("the token lacks a scope (`scope` names it), or the lease belongs to "
                          "another token"),
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
    """Route handlers bound to one catalog; `app` is the ASGI application."""

    def __init__(self, catalog: Catalog, token: str | None = None,
                 metrics: Metrics | None = None, max_body: int = DEFAULT_MAX_BODY,
                 access: AccessPolicy | None = None) -> None:
        self.catalog = catalog
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_body = max_body
        self.access = access if access is not None else AccessPolicy(token_secret=token)
        self.lease_tokens = LeaseTokens()
        self._encoded_catalog: tuple[int, bytes] = (-1, b"")
        self._stopping = asyncio.Event()
        self._describe_metrics()
        self.app = self._build()

    async def _call(self, call: Awaitable[T]) -> T:
        """A catalog call that answers 503 (through the BackendUnavailable handler) when slow."""
        try:
            return await asyncio.wait_for(call, BACKEND_TIMEOUT)
        except TimeoutError:
            raise BackendUnavailable(f"no answer within {BACKEND_TIMEOUT:g}s") from None

    # access control (the middleware has already answered 401 and read-scope 403s)

    def _require_write(self, request: Request, service: str) -> Token | None:
        """The caller, who must hold write:<a glob matching service> (or admin)."""
        token = caller(request)
        if token is not None and not token.can_write(service):
            raise forbidden(token, f"{WRITE}{service}", f"writes to service {service!r}")
        return token

    async def _require_lease(self, request: Request, lease_id: str) -> Token | None:
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
            snapshot = await self._call(self.catalog.snapshot())
            services = {i.service for i in snapshot.instances.values() if i.lease == lease_id}
            if token.can_write_any() and all(token.can_write(s) for s in services):
                self.lease_tokens.hold(lease_id, token.name)
                return token
        raise forbidden(token, ADMIN, f"lease {lease_id!r} belongs to another token")

    # leases

    async def create_lease(self, request: Request) -> Response:
        token = caller(request)
        if token is not None and not token.can_write_any():
            raise forbidden(token, ANY_WRITE, "creating leases")
        body = await parse_body(request, LeaseBody, self.max_body)
        lease = await self._call(self.catalog.create_lease(ttl_seconds(body.ttl), body.owner))
        if token is not None:
            self.lease_tokens.hold(lease.id, token.name)
        return json_response(lease.to_dict(), 201)

    async def get_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self._require_lease(request, lease_id)
        lease = await self._call(self.catalog.lease(lease_id))
        if lease is None:
            self.lease_tokens.forget(lease_id)
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return json_response(lease.to_dict())

    async def keepalive_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self._require_lease(request, lease_id)
        lease = await self._keepalive(lease_id)
        return json_response(lease.to_dict())

    async def _keepalive(self, lease_id: str) -> Lease:
        try:
            return await self._call(self.catalog.keepalive(lease_id))
        except UnknownLease:
            self.lease_tokens.forget(lease_id)
            raise

    async def revoke_lease(self, lease_id: LeasePath, request: Request) -> Response:
        await self._require_lease(request, lease_id)
        revoked = await self._call(self.catalog.revoke(lease_id))
        self.lease_tokens.forget(lease_id)
        if not revoked:
            raise ApiError(404, "unknown_lease", f"lease {lease_id!r} is unknown or has lapsed")
        return Response(status_code=204)

    # instances

    async def put_instance(self, service: ServicePath, instance_id: InstancePath,
                           request: Request) -> Response:
        token = self._require_write(request, service_name(service))
        body = await parse_body(request, InstanceBody, self.max_body)
        service = service_name(service)
        identifier(instance_id, "id")
        given = body.model_fields_set
        if ("lease" in given) == ("ttl" in given):
            raise ApiError(
                400, "invalid", "give exactly one of lease or ttl: every registration expires "
                "unless kept alive", "lease" if "lease" in given else "ttl")
        fields = body.model_dump(exclude={"lease", "ttl"})
        if token is not None:  # an id registered under another service moves: write it too
            current = (await self._call(self.catalog.snapshot())).get(instance_id)
            if current is not None and current.service != service:
                self._require_write(request, current.service)
        if "lease" in given:
            await self._require_lease(request, body.lease)
            instance = Instance(service=service, id=instance_id, lease=body.lease, **fields)
            try:
                created = await self._call(self.catalog.register(instance))
            except UnknownLease:
                self.lease_tokens.forget(body.lease)
                raise
        else:
            instance, created = await self._register_own_lease(
                service, instance_id, ttl_seconds(body.ttl), fields)
            if token is not None:
                self.lease_tokens.hold(instance.lease, token.name)
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
            await self._revoke_own_lease(instance_id, current.lease)
        return instance, created

    async def _revoke_own_lease(self, instance_id: str, lease_id: str) -> None:
        """Revoke the lease the API made for this instance alone, once nothing rides on it."""
        lease = await self._call(self.catalog.lease(lease_id))
        if lease is None or lease.owner != _own_owner(instance_id):
            return
        snapshot = await self._call(self.catalog.snapshot())
        if not any(i.lease == lease_id for i in snapshot.instances.values()):
            await self._call(self.catalog.revoke(lease_id))

    async def keepalive_instance(self, service: ServicePath, instance_id: InstancePath,
                                 request: Request) -> Response:
        self._require_write(request, service_name(service))
        instance = await self._find(service, instance_id)
        await self._require_lease(request, instance.lease)
        lease = await self._keepalive(instance.lease)
        return json_response(lease.to_dict())

    async def delete_instance(self, service: ServicePath, instance_id: InstancePath,
                              request: Request) -> Response:
        self._require_write(request, service_name(service))
        await self._find(service, instance_id)
        removed = await self._call(self.catalog.deregister(instance_id))
        if removed is None:
            raise self._not_found(service, instance_id)
        await self._revoke_own_lease(instance_id, removed.lease)
        return Response(status_code=204)

    async def _find(self, service: str, instance_id: str) -> Instance:
        instance = (await self._call(self.catalog.snapshot())).get(instance_id)
        if instance is None or instance.service != service_name(service):
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
        self, service: ServicePath, request: Request, tag: str | None = None,
        index: IndexQuery = None, wait: WaitQuery = None,
    ) -> Response:
        service = service_name(service)
        wait_seconds = parse_wait(wait)
        snapshot: Snapshot | None = await self._call(self.catalog.snapshot())
        if snapshot is not None and index is not None and index == snapshot.index:
            with waiting(slot_of(request.scope)) as early:
                snapshot = await self._block(request, snapshot, service, tag, wait_seconds,
                                             early)
        if snapshot is None:
            return Response(status_code=CLIENT_GONE)
        instances = [i.to_dict() for i in snapshot.service(service, tag)]
        return json_response(
            {"index": snapshot.index, "instances": instances},
            headers={"X-Pilotfish-Index": str(snapshot.index)},
        )

    async def get_catalog(self, request: Request, index: IndexQuery = None,
                          wait: WaitQuery = None) -> Response:
        """Every live instance; with `index`, blocks until the catalog moves past it."""
        wait_seconds = parse_wait(wait)
        snapshot: Snapshot | None = await self._call(self.catalog.snapshot())
        if snapshot is not None and index is not None and index == snapshot.index:
            with waiting(slot_of(request.scope)) as early:
                snapshot = await self._watch(request, index, wait_seconds, early)
        if snapshot is None:
            return Response(status_code=CLIENT_GONE)
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

    async def _block(self, request: Request, seen: Snapshot, service: str, tag: str | None,
                     wait: float, early: asyncio.Future[None]) -> Snapshot | None:
        """Wait until this service's answer changes or `wait` elapses (a Consul-style long-poll).

        None when the client went away first.
        """
        before = seen.service(service, tag)
        deadline = time.monotonic() + wait
        snapshot: Snapshot | None = seen
        while ((remaining := deadline - time.monotonic()) > 0 and not self._stopping.is_set()
               and not early.done()):
            assert snapshot is not None
            snapshot = await self._watch(request, snapshot.index, remaining, early)
            if snapshot is None or snapshot.service(service, tag) != before:
                break
        return snapshot

    async def _watch(self, request: Request, index: int, wait: float,
                     early: asyncio.Future[None]) -> Snapshot | None:
        """catalog.watch for a long-poll, cut short when the server stops, the listener needs
        the connection (`early`), or the client leaves."""
        watch = asyncio.ensure_future(self.catalog.watch(index, wait))
        stopping = asyncio.ensure_future(self._stopping.wait())
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            pending: set[asyncio.Future[Any]] = {watch, stopping, gone, early}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            gone.cancel()
            if not watch.done():
                watch.cancel()
        if watch in done:
            return watch.result()
        if gone in done:
            return None
        return await self._call(self.catalog.snapshot())

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

    async def metrics_text(self, request: Request) -> Response:
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
        app = FastAPI(title="pilotfish registry", version="1", docs_url="/v1/docs",
                      openapi_url="/v1/openapi.json", redoc_url=None)
        r = app.router
        lost_lease: Docs = {404: _error_doc("the lease is unknown or has lapsed")}
        lost_instance: Docs = {404: _error_doc("no such instance in that service")}
        lease = _ok(LeaseOut)
        r.add_api_route("/v1/leases", self.create_lease, methods=["POST"], status_code=201,
                        openapi_extra=_body_schema(LeaseBody),
                        responses={**_ok(LeaseOut, 201, description="granted"), **_INVALID,
                                   **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}", self.get_lease, methods=["GET"],
                        responses={**lease, **lost_lease, **_INVALID, **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}/keepalive", self.keepalive_lease, methods=["PUT"],
                        responses={**lease, **lost_lease, **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/leases/{lease_id}", self.revoke_lease, methods=["DELETE"],
                        status_code=204,
                        responses={204: {"description": "revoked, with every instance on it"},
                                   **lost_lease, **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/services", self.list_services, methods=["GET"],
                        responses={**_ok(ServicesOut, headers=True), **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/services/{service}", self.get_service, methods=["GET"],
                        responses={**_ok(InstancesOut, headers=True), **_INVALID,
                                   **_READ, **_UNAVAILABLE})
        instance_path = "/v1/services/{service}/instances/{instance_id}"
        r.add_api_route(instance_path, self.put_instance, methods=["PUT"],
                        openapi_extra=_body_schema(InstanceBody),
                        responses={**_ok(InstanceOut, description="updated"),
                                   **_ok(InstanceOut, 201, description="registered"), **lost_lease,
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route(instance_path, self.delete_instance, methods=["DELETE"], status_code=204,
                        responses={204: {"description": "deregistered"}, **lost_instance,
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route(instance_path + "/keepalive", self.keepalive_instance, methods=["PUT"],
                        responses={**lease, 404: _error_doc("no such instance, or its lease "
                                                            "lapsed"),
                                   **_INVALID, **_WRITE, **_UNAVAILABLE})
        r.add_api_route("/v1/catalog", self.get_catalog, methods=["GET"],
                        responses={**_ok(InstancesOut, headers=True), **_INVALID,
                                   **_READ, **_UNAVAILABLE})
        r.add_api_route("/v1/health", self.health, methods=["GET"],
                        responses={**_ok(HealthOut),
                                   503: {"model": HealthOut,
                                         "description": "the backend does not answer"}})
        r.add_api_route("/metrics", self.metrics_text, methods=["GET"], include_in_schema=False)
        from pilotfish.registry.consul.routes import consul_router  # Consul's read API (issue 14)
        app.include_router(consul_router(self.catalog, self._stopping))

        @app.exception_handler(ApiError)  # Denied too: 401 and write-scope 403s
        async def api_error(_: Request, exc: ApiError) -> Response:
            return exc.response()

        @app.exception_handler(InvalidField)
        async def invalid_field(_: Request, exc: InvalidField) -> Response:
            return _error(400, "invalid", str(exc), exc.field)

        @app.exception_handler(UnknownLease)
        async def unknown_lease(_: Request, exc: UnknownLease) -> Response:
            return _error(404, "unknown_lease", str(exc), "lease")

        @app.exception_handler(BackendUnavailable)
        async def unavailable(_: Request, exc: BackendUnavailable) -> Response:
            return _error(503, "unavailable", f"registry backend unavailable: {exc}")

        @app.exception_handler(TooManyWaiting)
        async def too_many_waiting(_: Request, exc: TooManyWaiting) -> Response:
            response = _error(503, "unavailable", str(exc))
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
                return _error(404, "not_found", f"no such path: {request.url.path}")
            return _error(exc.status_code, "invalid", str(exc.detail))

        @app.exception_handler(RequestValidationError)
        async def bad_request(_: Request, exc: RequestValidationError) -> Response:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
            parts = [str(p) for p in first["loc"] if p not in ("body", "query", "path")]
            if "[key]" in parts:  # a bad key names its object, not itself
                parts = parts[:parts.index("[key]") - 1]
            field = ".".join(parts)
            return _error(422, "invalid", f"{field or 'body'}: {first['msg']}", field or None)

        @app.exception_handler(Exception)
        async def unexpected(_: Request, __: Exception) -> Response:
            # answered here as JSON; Starlette re-raises it, and LastResort logs one line
            return Response(INTERNAL_BODY, status_code=500, media_type="application/json")

        app_with_acl = MethodGate(AccessControl(app, self.access), app)
        return RequestCounter(LastResort(app_with_acl), self.metrics)  # type: ignore[return-value]


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """The API routes, also those of included routers (which newer FastAPI keeps apart)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (included := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(included.routes)  # included without a prefix (api.py)


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
    from pilotfish.registry.consul.routes import is_consul_path
    method, listed = scope.get("method", ""), ", ".join(allowed)
    if is_consul_path(scope.get("path", "")):
        response = Response(f"method {method} not allowed", status_code=405,
                            media_type="text/plain")
    else:
        response = _error(405, "method_not_allowed", f"{method} is not allowed here; use "
                                                     f"{listed}")
    response.headers["Allow"] = listed
    return response


class MethodGate:
    """405 for a method the path's routes do not take, before access control looks at it.

    Without it an ACL answers `PUT /v1/catalog/services` with 401 "writes need a token", as if
    a token could make it work.
    """

    def __init__(self, app: ASGIApp, routes: FastAPI) -> None:
        self.app = app
        self.routes = routes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            allowed = path_methods(self.routes, scope)
            if allowed is not None and scope["method"] not in allowed:
                await method_not_allowed(scope, allowed)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, code: str, message: str, field: str | None = None) -> Response:
    return ApiError(status, code, message, field).response()


OPEN_PATHS = frozenset({"/metrics", "/v1/health", "/v1/docs", "/v1/openapi.json",
                        "/v1/docs/oauth2-redirect"})
READ_METHODS = frozenset({"GET", "HEAD"})
CALLER = "pilotfish.caller"
LEASE_PATHS = "/v1/leases/"


def caller(request: Request) -> Token | None:
    """The token the AccessControl middleware found (None: the API is open, or anonymous)."""
    token: Token | None = request.scope.get(CALLER)
    return token


class AccessControl:
    """Identifies the caller's token for every request and answers 401 / read-scope 403 itself.

    Write scopes and lease ownership depend on the path and body: the handlers check those.
    `/metrics`, `/v1/health` and the OpenAPI document stay open.
    """

    def __init__(self, app: ASGIApp, access: AccessPolicy) -> None:
        self.app = app
        self.access = access

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.access.enabled
                or scope["path"] in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        try:
            scope[CALLER] = self.access.authenticate(
                presented_token(scope), write=scope["method"] not in READ_METHODS,
                needs_read=not scope["path"].startswith(LEASE_PATHS))  # those: by ownership
        except Denied as exc:
            from pilotfish.registry.consul.routes import consul_denied, is_consul_path
            response = consul_denied(exc) if is_consul_path(scope["path"]) else exc.response()
            await response(scope, receive, send)
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
