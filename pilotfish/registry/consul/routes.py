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
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from pilotfish.catalog.interface import BackendUnavailable, Catalog, Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.config import env
from pilotfish.http.errors import ApiError
from pilotfish.http.long_polls import RETRY_AFTER, TooManyWaiting, slot_of
from pilotfish.registry.bodies import parse_wait
from pilotfish.registry.calls import bounded
from pilotfish.registry.checks import CheckReports
from pilotfish.registry.consul.agent_checks import AgentChecks
from pilotfish.registry.consul.blocking import Blocker
from pilotfish.registry.consul.dialect import ERROR_DOCS, ConsulError, plain_text
from pilotfish.registry.consul.filter import FilterError, Item, compile_filter_paced
from pilotfish.registry.consul.pacing import Pacer
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

T = TypeVar("T")
DEFAULT_DATACENTER = "dc1"
CHECK_STATES = ("any", "passing", "warning", "critical")
MAX_CACHED_BODIES = 1024
MAX_INDEX_DIGITS = 20  # a uint64, as Consul's indexes


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

    async def kept(self, family: str, items: Sequence[Item]) -> list[Item]:
        """The items ?filter= keeps (every one without a filter), evaluated in slices."""
        if not self.filter_text:
            return list(items)
        try:
            keep = await compile_filter_paced(self.filter_text, _EXAMPLES[family])
        except FilterError as exc:
            raise ConsulError(400, f"Failed to create boolean expression evaluator: filter: "
                                   f"{exc}") from None
        try:
            return await keep.select(items)
        except FilterError as exc:
            raise ConsulError(400, f"filter: {exc}") from None

    def node_matches(self, entry: Entry) -> bool:
        """Whether the entry's node carries every ?node-meta=key:value pair."""
        meta = node_meta(entry.node)
        return all(meta.get(key) == value for key, value in self.node_meta)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    return value is not None and value.lower() not in ("0", "false")


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def _encode_paced(data: Any) -> bytes:
    """_encode, a list one item at a time with the loop free in between (same bytes)."""
    if not isinstance(data, list):
        return _encode(data)
    pacer = Pacer()
    parts = []
    for item in data:
        await pacer.step()
        parts.append(json.dumps(item, separators=(",", ":")))
    return ("[" + ",".join(parts) + "]").encode()


class ShapedItems:
    """Each entry's JSON item per endpoint family, made once per model (catalog change).

    Reads between two changes reuse them instead of making the same objects again for every
    request: less work, and far less garbage, whose collection would pause the whole loop
    (tens of ms for a full collection with a few thousand instances).
    """

    def __init__(self) -> None:
        self._model: Model | None = None
        self._items: dict[tuple[str, int], Any] = {}

    async def items(self, model: Model, family: str, entries: Iterable[Entry],
                    shape: Callable[[Entry], T]) -> list[T]:
        """[shape(e) for e in entries], each made once per model, in slices."""
        if model is not self._model:  # keeps the model, so entry ids stay unique
            self._model, self._items = model, {}
        pacer = Pacer()
        shaped = []
        for entry in entries:
            key = (family, id(entry))
            item = self._items.get(key)
            if item is None:
                await pacer.step()
                item = self._items[key] = shape(entry)
            shaped.append(item)
        return shaped


class ConsulApi:
    """Consul's discovery (read) API over one catalog; `router` goes on the registry API app."""

    def __init__(self, catalog: Catalog, stopping: asyncio.Event,
                 datacenter: str | None = None) -> None:
        self.catalog = catalog
        self.datacenter = datacenter or env("consul_datacenter", DEFAULT_DATACENTER) \
            or DEFAULT_DATACENTER
        self.node_name = socket.gethostname()
        self.models = ModelBuilder(catalog, self.datacenter)
        self.blocker = Blocker(catalog, stopping, bounded)
        self._bodies: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._lane = asyncio.Lock()  # one answer computed at a time: see pacing.py
        self._shaped = ShapedItems()
        self.router = self._routes()

    # request plumbing

    def _query(self, request: Request) -> Query:
        params = request.query_params
        dc = params.get("dc")
        if dc and dc != self.datacenter:
            raise ConsulError(500, f"No path to datacenter {dc!r}")
        index = None
        if params.get("index") not in (None, ""):
            text = params["index"]
            if not (text.isascii() and text.isdigit() and len(text) <= MAX_INDEX_DIGITS):
                raise ConsulError(400, f"Invalid index: {text[:40]!r}: want a whole number "
                                       f"of at most {MAX_INDEX_DIGITS} digits")
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
                        render: Callable[[Model, Query], Awaitable[Any]]) -> Response:
        """Answer (blocking if asked) with `render(model, query)` as JSON."""
        try:
            query = self._query(request)

            answer_key = (key, query.filter_text, query.node_meta)

            async def encode(snapshot: Snapshot) -> bytes:
                cached = self._bodies.get(answer_key)
                if cached is not None and cached[0] == snapshot.index:
                    return cached[1]  # many watchers of one answer: encoded once per change
                model = await bounded(self.models.build(snapshot))  # lease reads, bounded
                async with self._lane:
                    body = await _encode_paced(await render(model, query))
                self._bodies[answer_key] = (snapshot.index, body)
                self._bodies.move_to_end(answer_key)
                while len(self._bodies) > MAX_CACHED_BODIES:
                    self._bodies.popitem(last=False)
                return body

            body, index = await self.blocker.answer(answer_key, encode, query.index, query.wait,
                                                    slot_of(request.scope))
        except ConsulError as exc:
            return plain_text(exc.status, exc.message)
        except TooManyWaiting as exc:
            refused = plain_text(503, str(exc))
            refused.headers.update({"Retry-After": str(RETRY_AFTER), "Connection": "close"})
            return refused
        except BackendUnavailable as exc:
            return plain_text(500, f"rpc error: registry backend unavailable: {exc}")
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

        async def render(model: Model, query: Query) -> Any:
            entries = [e for group in model.services.values() for e in group
                       if query.node_matches(e)]
            items = await self._shaped.items(
                model, "catalog", entries, lambda e: catalog_service_json(e, model.datacenter))
            kept = {id(item) for item in await query.kept("catalog", items)}
            groups: dict[str, list[Entry]] = {}
            for entry, item in zip(entries, items, strict=True):
                if id(item) in kept:
                    groups.setdefault(entry.instance.service, []).append(entry)
            return services_json(groups)

        return await self._blocking(request, ("services",), render)

    async def catalog_service(self, service: str, request: Request) -> Response:
        """GET /v1/catalog/service/{service}: its instances, node fields alongside."""
        tags = tuple(request.query_params.getlist("tag"))

        async def render(model: Model, query: Query) -> Any:
            items = await self._shaped.items(
                model, "catalog", self._selected(model, service, tags, query),
                lambda e: catalog_service_json(e, model.datacenter))
            return await query.kept("catalog", items)

        return await self._blocking(request, ("service", service.lower(), tags), render)

    async def health_service(self, service: str, request: Request) -> Response:
        """GET /v1/health/service/{service}: node, service and checks of each instance."""
        tags = tuple(request.query_params.getlist("tag"))
        passing = _flag(request, "passing")

        async def render(model: Model, query: Query) -> Any:
            entries = [e for e in self._selected(model, service, tags, query)
                       if not passing or e.instance.overall_health() == "passing"]
            items = await self._shaped.items(
                model, "health", entries, lambda e: health_entry_json(e, model.datacenter))
            return await query.kept("health", items)

        return await self._blocking(request, ("health", service.lower(), tags, passing), render)

    async def catalog_nodes(self, request: Request) -> Response:
        """GET /v1/catalog/nodes: every node some instance is on."""

        async def render(model: Model, query: Query) -> Any:
            items = await self._shaped.items(
                model, "node", (e for e in model.nodes.values() if query.node_matches(e)),
                lambda e: node_json(e, model.datacenter))
            return await query.kept("node", items)

        return await self._blocking(request, ("nodes",), render)

    async def catalog_node(self, node: str, request: Request) -> Response:
        """GET /v1/catalog/node/{node}: the node and its services (null for an unknown node)."""

        async def render(model: Model, query: Query) -> Any:
            entries = [e for e in model.entries if e.node.name == node]
            if not entries:
                return None
            services = await query.kept(
                "service", await self._shaped.items(model, "service", entries, service_json))
            return {"Node": node_json(entries[0], model.datacenter),
                    "Services": {s["ID"]: s for s in services}}

        return await self._blocking(request, ("node", node), render)

    async def health_checks(self, service: str, request: Request) -> Response:
        """GET /v1/health/checks/{service}: the service checks of each of its instances."""

        async def render(model: Model, query: Query) -> Any:
            shaped = await self._shaped.items(
                model, "checks", self._selected(model, service, (), query), checks_json)
            checks = [check for each in shaped for check in each[1:]]
            return await query.kept("check", checks)

        return await self._blocking(request, ("checks", service.lower()), render)

    async def health_state(
        self, state: Annotated[str, Path(json_schema_extra={"enum": list(CHECK_STATES)})],
        request: Request,
    ) -> Response:
        """GET /v1/health/state/{state}: every check in that state (any, passing, ...)."""
        if state not in CHECK_STATES:
            return plain_text(400, f"Bad state {state!r}: want one of {', '.join(CHECK_STATES)}")

        async def render(model: Model, query: Query) -> Any:
            entries = [e for e in model.entries if query.node_matches(e)]
            pairs = await self._shaped.items(model, "checks", entries, checks_json)
            checks: dict[str, dict[str, Any]] = {}
            pacer = Pacer()
            for entry, (node_check, *service_checks) in zip(entries, pairs, strict=True):
                await pacer.step()
                checks.setdefault(f"{entry.node.name}/serfHealth", node_check)
                for check in service_checks:
                    checks[f"{entry.node.name}/{check['CheckID']}"] = check
            return await query.kept("check", [c for c in checks.values()
                                              if state == "any" or c["Status"] == state])

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
            router.add_api_route(path, handler, methods=["GET"], responses=ERROR_DOCS)
        return router


def consul_router(catalog: Catalog, stopping: asyncio.Event,
                  reports: CheckReports | None = None) -> APIRouter:
    """The Consul-compatible routes (reads; with `reports`, the agent's TTL check writes), for
    the registry API app to include.

    Tokens (X-Consul-Token, ?token=, a bearer token) are checked by the API's ACL middleware
    (pilotfish.registry.access), which answers these paths through dialect.consul_denied.
    """
    router = ConsulApi(catalog, stopping).router
    if reports is not None:
        AgentChecks(catalog, reports).add_routes(router)
    return router
