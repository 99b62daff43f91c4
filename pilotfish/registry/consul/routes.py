"""Consul's read endpoints on the registry API's listener (none of their paths is a pilotfish one).

pilotfish's own routes are /v1/services..., /v1/leases..., /v1/catalog, /v1/health and /metrics;
Consul's are /v1/catalog/<something>, /v1/health/service/..., /v1/agent/... and /v1/status/...:
exact paths never collide (`/v1/catalog` and `/v1/catalog/services` are different routes), so one
listener on Consul's port 8500 serves both. Errors are plain text with Consul's status codes.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from pilotfish.acl import Denied
from pilotfish.config import env
from pilotfish.long_polls import RETRY_AFTER, TooManyWaiting, slot_of
from pilotfish.registry.api import BACKEND_TIMEOUT, ApiError, parse_wait
from pilotfish.registry.catalog import BackendUnavailable, Catalog, Snapshot
from pilotfish.registry.consul.blocking import Blocker
from pilotfish.registry.consul.filter import FilterError, Predicate, compile_filter
from pilotfish.registry.consul.shapes import (
    Entry,
    Model,
    ModelBuilder,
    agent_self_json,
    catalog_service_json,
    checks_json,
    derive_node,
    health_entry_json,
    node_json,
    node_meta,
    service_json,
    services_json,
)
from pilotfish.registry.model import Instance

T = TypeVar("T")
DEFAULT_DATACENTER = "dc1"
CHECK_STATES = ("any", "passing", "warning", "critical")
MAX_CACHED_BODIES = 1024


class ConsulError(Exception):
    """An error answered as Consul does: a status code and a plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _example_entry() -> Entry:
    instance = Instance(service="example", id="example-1", address="127.0.0.1", port=1,
                        lease="example", tags=("tag",), meta={"key": "value"})
    return Entry(instance, derive_node("owner", "127.0.0.1"), 1, 1, 1, 1)


_EXAMPLE = _example_entry()
_EXAMPLES: dict[str, Mapping[str, Any]] = {
    "catalog": catalog_service_json(_EXAMPLE, DEFAULT_DATACENTER),
    "health": health_entry_json(_EXAMPLE, DEFAULT_DATACENTER),
    "node": node_json(_EXAMPLE, DEFAULT_DATACENTER),
    "check": checks_json(_EXAMPLE)[1],
    "service": service_json(_EXAMPLE),
}
"""One item of each endpoint family, so filters are checked against the shape they will meet."""


@dataclass(frozen=True, slots=True)
class Query:
    """The parameters every Consul read takes, parsed once."""

    index: int | None
    wait: float
    consistency: str
    filter_text: str
    node_meta: tuple[tuple[str, str], ...]

    def predicate(self, family: str) -> Predicate:
        """The ?filter= expression compiled for this endpoint family's items."""
        try:
            return compile_filter(self.filter_text, _EXAMPLES[family])
        except FilterError as exc:
            raise ConsulError(400, f"Failed to create boolean expression evaluator: {exc}") \
                from None

    def node_matches(self, entry: Entry) -> bool:
        """Whether the entry's node carries every ?node-meta=key:value pair."""
        meta = node_meta(entry.node)
        return all(meta.get(key) == value for key, value in self.node_meta)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    return value is not None and value.lower() not in ("0", "false")


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class ConsulApi:
    """Consul's discovery (read) API over one catalog; `router` goes on the registry API app."""

    def __init__(self, catalog: Catalog, stopping: asyncio.Event,
                 datacenter: str | None = None) -> None:
        self.catalog = catalog
        self.datacenter = datacenter or env("consul_datacenter", DEFAULT_DATACENTER) \
            or DEFAULT_DATACENTER
        self.node_name = socket.gethostname()
        self.models = ModelBuilder(catalog, self.datacenter)
        self.blocker = Blocker(catalog, stopping, self._call)
        self._bodies: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self.router = self._routes()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(call, BACKEND_TIMEOUT)
        except TimeoutError:
            raise BackendUnavailable(f"no answer within {BACKEND_TIMEOUT:g}s") from None

    # request plumbing

    def _query(self, request: Request) -> Query:
        params = request.query_params
        dc = params.get("dc")
        if dc and dc != self.datacenter:
            raise ConsulError(500, f"No path to datacenter {dc!r}")
        index = None
        if params.get("index") not in (None, ""):
            text = params["index"]
            if not (text.isascii() and text.isdigit()):
                raise ConsulError(400, f"Invalid index: {text!r}")
            index = int(text)
        try:
            wait = parse_wait(params.get("wait"))
        except ApiError:
            raise ConsulError(400, f"Invalid wait time: {params.get('wait')!r}") from None
        stale, consistent = _flag(request, "stale"), _flag(request, "consistent")
        if stale and consistent:
            raise ConsulError(400, "Cannot specify ?stale with ?consistent, conflicting "
                                   "semantics.")
        pairs = []
        for item in params.getlist("node-meta"):
            key, colon, value = item.partition(":")
            if not colon or not key:
                raise ConsulError(400, f"Invalid node-meta {item!r}: want key:value")
            pairs.append((key, value))
        return Query(index, wait, "stale" if stale else "consistent" if consistent else "leader",
                     params.get("filter", ""), tuple(sorted(pairs)))

    async def _blocking(self, request: Request, key: Hashable,
                        render: Callable[[Model, Query], Any]) -> Response:
        """Answer (blocking if asked) with `render(model, query)` as JSON."""
        try:
            query = self._query(request)

            answer_key = (key, query.filter_text, query.node_meta)

            async def encode(snapshot: Snapshot) -> bytes:
                cached = self._bodies.get(answer_key)
                if cached is not None and cached[0] == snapshot.index:
                    return cached[1]  # many watchers of one answer: encoded once per change
                model = await self._call(self.models.build(snapshot))  # lease reads, bounded
                body = _encode(render(model, query))
                self._bodies[answer_key] = (snapshot.index, body)
                self._bodies.move_to_end(answer_key)
                while len(self._bodies) > MAX_CACHED_BODIES:
                    self._bodies.popitem(last=False)
                return body

            body, index = await self.blocker.answer(answer_key, encode, query.index, query.wait,
                                                    slot_of(request.scope))
        except ConsulError as exc:
            return _text(exc.status, exc.message)
        except TooManyWaiting as exc:
            refused = _text(503, str(exc))
            refused.headers.update({"Retry-After": str(RETRY_AFTER), "Connection": "close"})
            return refused
        except BackendUnavailable as exc:
            return _text(500, f"rpc error: registry backend unavailable: {exc}")
        return Response(body, media_type="application/json", headers={
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true",
            "X-Consul-LastContact": "0",
            "X-Consul-Effective-Consistency": query.consistency,
        })

    def _static(self, request: Request, data: Any) -> Response:
        """An answer that does not depend on the catalog: its index never moves."""
        return Response(_encode(data), media_type="application/json", headers={
            "X-Consul-Index": "1", "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
        })

    # endpoints

    async def catalog_services(self, request: Request) -> Response:
        """GET /v1/catalog/services: name -> tags (filter on the instances)."""

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("catalog")
            groups = {name: [e for e in entries if query.node_matches(e)
                             and keep(catalog_service_json(e, model.datacenter))]
                      for name, entries in model.services.items()}
            return services_json({name: group for name, group in groups.items() if group})

        return await self._blocking(request, ("services",), render)

    async def catalog_service(self, service: str, request: Request) -> Response:
        """GET /v1/catalog/service/{service}: its instances, node fields alongside."""
        tags = tuple(request.query_params.getlist("tag"))

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("catalog")
            items = (catalog_service_json(e, model.datacenter)
                     for e in self._selected(model, service, tags, query))
            return [item for item in items if keep(item)]

        return await self._blocking(request, ("service", service.lower(), tags), render)

    async def health_service(self, service: str, request: Request) -> Response:
        """GET /v1/health/service/{service}: node, service and checks of each instance."""
        tags = tuple(request.query_params.getlist("tag"))
        passing = _flag(request, "passing")

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("health")
            items = (health_entry_json(e, model.datacenter)
                     for e in self._selected(model, service, tags, query)
                     if not passing or e.instance.health == "passing")
            return [item for item in items if keep(item)]

        return await self._blocking(request, ("health", service.lower(), tags, passing), render)

    async def catalog_nodes(self, request: Request) -> Response:
        """GET /v1/catalog/nodes: every node some instance is on."""

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("node")
            items = (node_json(e, model.datacenter) for e in model.nodes.values()
                     if query.node_matches(e))
            return [item for item in items if keep(item)]

        return await self._blocking(request, ("nodes",), render)

    async def catalog_node(self, node: str, request: Request) -> Response:
        """GET /v1/catalog/node/{node}: the node and its services (null for an unknown node)."""

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("service")
            entries = [e for e in model.entries if e.node.name == node]
            if not entries:
                return None
            services = {e.instance.id: service_json(e) for e in entries}
            return {"Node": node_json(entries[0], model.datacenter),
                    "Services": {i: s for i, s in services.items() if keep(s)}}

        return await self._blocking(request, ("node", node), render)

    async def health_checks(self, service: str, request: Request) -> Response:
        """GET /v1/health/checks/{service}: the service check of each of its instances."""

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("check")
            checks = (checks_json(e)[1] for e in self._selected(model, service, (), query))
            return [check for check in checks if keep(check)]

        return await self._blocking(request, ("checks", service.lower()), render)

    async def health_state(
        self, state: Annotated[str, Path(json_schema_extra={"enum": list(CHECK_STATES)})],
        request: Request,
    ) -> Response:
        """GET /v1/health/state/{state}: every check in that state (any, passing, ...)."""
        if state not in CHECK_STATES:
            return _text(400, f"Bad state {state!r}: want one of {', '.join(CHECK_STATES)}")

        def render(model: Model, query: Query) -> Any:
            keep = query.predicate("check")
            checks: dict[str, dict[str, Any]] = {}
            for entry in model.entries:
                if not query.node_matches(entry):
                    continue
                node_check, service_check = checks_json(entry)
                checks.setdefault(f"{entry.node.name}/serfHealth", node_check)
                checks[f"{entry.node.name}/{service_check['CheckID']}"] = service_check
            return [c for c in checks.values()
                    if (state == "any" or c["Status"] == state) and keep(c)]

        return await self._blocking(request, ("state", state), render)

    @staticmethod
    def _selected(model: Model, service: str, tags: tuple[str, ...],
                  query: Query) -> list[Entry]:
        return [e for e in model.service(service)
                if all(tag in e.instance.tags for tag in tags) and query.node_matches(e)]

    async def agent_self(self, request: Request) -> Response:
        """GET /v1/agent/self: the datacenter (what Prometheus asks it for) and this 'agent'."""
        host = request.scope.get("server") or ("127.0.0.1", 8500)
        return self._static(request, agent_self_json(self.datacenter, self.node_name, host[0]))

    async def status_leader(self, request: Request) -> Response:
        """GET /v1/status/leader: this listener's address, the only 'server' there is."""
        return self._static(request, self._server_address(request))

    async def status_peers(self, request: Request) -> Response:
        """GET /v1/status/peers: this listener's address."""
        return self._static(request, [self._server_address(request)])

    async def datacenters(self, request: Request) -> Response:
        """GET /v1/catalog/datacenters: the one datacenter this registry is."""
        return self._static(request, [self.datacenter])

    @staticmethod
    def _server_address(request: Request) -> str:
        host, port = request.scope.get("server") or ("127.0.0.1", 8500)
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def _routes(self) -> APIRouter:
        router = APIRouter(tags=["consul-compatible (read)"])
        routes: list[tuple[str, Callable[..., Awaitable[Response]]]] = [
            ("/v1/catalog/services", self.catalog_services),
            ("/v1/catalog/service/{service}", self.catalog_service),
            ("/v1/health/service/{service}", self.health_service),
            ("/v1/catalog/nodes", self.catalog_nodes),
            ("/v1/catalog/node/{node}", self.catalog_node),
            ("/v1/health/checks/{service}", self.health_checks),
            ("/v1/health/state/{state}", self.health_state),
            ("/v1/catalog/datacenters", self.datacenters),
            ("/v1/agent/self", self.agent_self),
            ("/v1/status/leader", self.status_leader),
            ("/v1/status/peers", self.status_peers),
        ]
        for path, handler in routes:
            router.add_api_route(path, handler, methods=["GET"], responses=_ERRORS)
        return router


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"text/plain": {}}}
    for status, description in ((400, "a bad parameter, ?filter= or ?wait= (plain text)"),
                                (403, "ACL not found (an unknown token), or Permission denied (a "
                                      "token without scope read; no token where reads need "
                                      "one)"),
                                (500, "the backend did not answer (plain text, as Consul)"))
}


def _text(status: int, message: str) -> Response:
    return Response(message, status_code=status, media_type="text/plain")


def consul_router(catalog: Catalog, stopping: asyncio.Event) -> APIRouter:
    """The Consul-compatible read routes, for the registry API app to include.

    Tokens (X-Consul-Token, ?token=, a bearer token) are checked by the API's ACL middleware
    (pilotfish.acl), which answers these paths through consul_denied.
    """
    return ConsulApi(catalog, stopping).router


CONSUL_PREFIXES = ("/v1/catalog/", "/v1/health/", "/v1/agent/", "/v1/status/")


def is_consul_path(path: str) -> bool:
    """Whether a path is one of the Consul-compatible routes (answered in Consul's dialect)."""
    return path.startswith(CONSUL_PREFIXES)


def consul_denied(exc: Denied) -> Response:
    """A refusal as Consul words it: 403 "ACL not found" for an unknown token, else
    "Permission denied" (Consul never answers 401), naming the token and scope, never a secret.
    """
    if exc.status == 401 and exc.message == "unknown token":
        return _text(403, "ACL not found")
    if exc.token is not None:
        return _text(403, f"Permission denied: token {exc.token!r} lacks scope {exc.scope!r}")
    return _text(403, f"Permission denied: {exc.message}")
