"""A test double of the few Consul HTTP API endpoints the consul:// backend uses.

No Consul server can be installed on the CI machines, so the backend is checked
against this double, which follows Consul's documented behaviour for:

- agent services: ``PUT /v1/agent/service/register`` (TTL checks only, keys matched
  case-insensitively like Consul's JSON decoding), ``PUT /v1/agent/service/deregister/:id``,
  ``GET /v1/agent/service/:id``, ``GET /v1/agent/services``, ``GET /v1/agent/checks``,
  ``GET /v1/agent/self``;
- TTL checks: ``PUT /v1/agent/check/{pass,warn,fail}/:id`` reset the TTL clock; a check
  not updated within its TTL turns critical ("TTL expired");
- ``DeregisterCriticalServiceAfter``: a reaper runs every ``--reap-interval`` seconds
  (30 s in Consul) and removes services whose check has been critical longer than
  that. Consul raises values below one minute to one minute; the double does the same
  unless started with ``--min-deregister-after`` lower (tests use short values);
- reads with blocking queries: ``GET /v1/catalog/services``, ``GET /v1/health/service/:name``
  and ``GET /v1/kv/:key[?recurse]`` answer with ``X-Consul-Index`` and, given
  ``?index=N&wait=D``, hang until that resource's index passes N or the wait (default
  5 m, at most 10 m, plus up to wait/16 jitter) runs out;
- KV: ``PUT`` with ``?cas=`` (0 = only if absent), ``DELETE`` with ``?cas=``/``?recurse``,
  values base64-encoded in reads, 404 with an index when nothing matches;
- ``GET /v1/status/leader``.

State lives in memory: like an agent and server without persistence, a restarted
double has forgotten everything. Run it as ``python -m tests.consul_double --port 0``;
it prints ``consul double listening on http://127.0.0.1:PORT`` once it accepts requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

NODE = "pilotfish-double"
DATACENTER = "dc1"
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
META_MAX_PAIRS = 64
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class BadRequest(Exception):
    """A request Consul would refuse with 400 and a plain-text reason."""


def parse_duration(text: str) -> float:
    """Parse a Go duration ("10s", "1m30s", "500ms") as Consul does; raise BadRequest."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match[1]) * _UNIT[match[2]]
        position = match.end()
    if position != len(text) or position == 0:
        raise BadRequest(f'time: invalid duration "{text}"')
    return total


def _fold(data: Mapping[str, Any]) -> dict[str, Any]:
    """Keys folded to lower case without '_', as Consul's decoder matches them."""
    return {key.lower().replace("_", ""): value for key, value in data.items()}


@dataclass
class Check:
    """One agent TTL check and its state."""

    id: str
    name: str
    service_id: str
    ttl: float
    deregister_after: float | None
    status: str
    notes: str = ""
    output: str = ""
    critical_since: float | None = None
    timer: asyncio.TimerHandle | None = None
    create_index: int = 0
    modify_index: int = 0


@dataclass
class Service:
    """One agent service registration."""

    id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    checks: list[str] = field(default_factory=list)
    create_index: int = 0
    modify_index: int = 0


@dataclass
class KVEntry:
    """One key in the KV store."""

    value: bytes
    flags: int
    create_index: int
    modify_index: int


class ConsulState:
    """Everything the double knows, with Consul-style raft indexes and change wake-ups."""

    def __init__(self, reap_interval: float, min_deregister_after: float) -> None:
        self.index = 1
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.kv: dict[str, KVEntry] = {}
        self.kv_tombstones: dict[str, int] = {}
        self.kv_index = 1
        self.services_index = 1
        self.service_index: dict[str, int] = {"consul": 1}
        self.reap_interval = reap_interval
        self.min_deregister_after = min_deregister_after
        self.node_id = str(uuid.uuid4())
        self._changed = asyncio.Event()

    # -- change tracking -------------------------------------------------

    def bump(self) -> int:
        """Advance the raft index for a write and wake blocked readers."""
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()
        return self.index

    async def wait_change(self, timeout: float) -> None:
        """Sleep until the next write or timeout."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def touch_service(self, name: str) -> None:
        index = self.bump()
        self.service_index[name] = index
        self.services_index = index

    # -- services and checks ----------------------------------------------

    def register(self, body: Mapping[str, Any], replace_checks: bool) -> None:
        data = _fold(body)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("Missing service name")
        service_id = data.get("id") or name
        port = int(data.get("port") or 0)
        if not 0 <= port <= 65535:
            raise BadRequest(f"Invalid port {port}")
        meta = dict(data.get("meta") or {})
        if len(meta) > META_MAX_PAIRS:
            raise BadRequest(f"Invalid Service Meta: Node metadata cannot contain more than "
                             f"{META_MAX_PAIRS} key/value pairs")
        for key, value in meta.items():
            if not _META_KEY.match(key) or len(key) > 128:
                raise BadRequest(f"Invalid Service Meta: Key contains invalid characters: {key!r}")
            if key.startswith("consul-"):
                raise BadRequest(f"Invalid Service Meta: Key prefix 'consul-' is reserved: {key}")
            if not isinstance(value, str) or len(value) > 512:
                raise BadRequest(f"Invalid Service Meta: Value is too long: {key}")
        weights = _fold(data.get("weights") or {"Passing": 1, "Warning": 1})
        passing = int(weights.get("passing", 1))
        if passing < 1:
            raise BadRequest("Passing must be greater than 0")
        raw_checks = list(data.get("checks") or [])
        if data.get("check"):
            raw_checks.insert(0, data["check"])
        checks = [self._check(service_id, _fold(raw), n, len(raw_checks))
                  for n, raw in enumerate(raw_checks, start=1)]

        previous = self.services.get(service_id)
        index = self.bump()
        service = Service(
            id=service_id, name=name, address=str(data.get("address") or ""), port=port,
            tags=list(data.get("tags") or []), meta=meta,
            weights={"Passing": passing, "Warning": int(weights.get("warning", 1))},
            create_index=previous.create_index if previous else index, modify_index=index,
        )
        new_ids = {check.id for check in checks}
        old_ids = previous.checks if previous is not None else []
        if previous is not None and previous.name != name:
            self.service_index[previous.name] = index
        if replace_checks:
            for check_id in old_ids:
                if check_id not in new_ids:
                    self._drop_check(check_id)
            service.checks = []
        else:
            service.checks = [c for c in old_ids if c not in new_ids and c in self.checks]
        for check in checks:
            old = self.checks.get(check.id)
            if old is not None:
                if old.timer:
                    old.timer.cancel()
                check.create_index = old.create_index
                if check.status == "":
                    check.status, check.output = old.status, old.output
            if check.status == "":
                check.status = "critical"  # Consul's initial status when none is given
            check.create_index = check.create_index or index
            check.modify_index = index
            if check.status == "critical":
                check.critical_since = time.monotonic()
            self.checks[check.id] = check
            service.checks.append(check.id)
            self._arm(check)
        self.services[service_id] = service
        self.service_index[name] = index
        self.services_index = index

    def _check(self, service_id: str, data: Mapping[str, Any], n: int, count: int) -> Check:
        if not data.get("ttl"):
            raise BadRequest("the Consul double supports TTL checks only")
        ttl = parse_duration(str(data["ttl"]))
        if ttl <= 0:
            raise BadRequest("TTL must be > 0 for TTL checks")
        deregister = None
        if data.get("deregistercriticalserviceafter"):
            deregister = max(parse_duration(str(data["deregistercriticalserviceafter"])),
                             self.min_deregister_after)
        default_id = f"service:{service_id}" if count == 1 else f"service:{service_id}:{n}"
        status = str(data.get("status") or "")
        if status not in ("", "passing", "warning", "critical"):
            raise BadRequest(f"Invalid check status: {status!r}")
        return Check(
            id=str(data.get("checkid") or data.get("id") or default_id),
            name=str(data.get("name") or f"Service '{service_id}' check"),
            service_id=service_id, ttl=ttl, deregister_after=deregister, status=status,
            notes=str(data.get("notes") or ""),
        )

    def _arm(self, check: Check) -> None:
        loop = asyncio.get_running_loop()
        check.timer = loop.call_later(check.ttl, self._ttl_expired, check.id)

    def _ttl_expired(self, check_id: str) -> None:
        check = self.checks.get(check_id)
        if check is None:
            return
        check.timer = None
        self._set_status(check, "critical", f"TTL expired (last output before timeout follows): "
                                            f"{check.output}")

    def _set_status(self, check: Check, status: str, output: str) -> None:
        changed = check.status != status
        check.output = output
        if status == "critical":
            if check.critical_since is None or changed:
                check.critical_since = time.monotonic()
        else:
            check.critical_since = None
        check.status = status
        if changed:  # Consul syncs output-only changes lazily; status changes at once
            service = self.services.get(check.service_id)
            check.modify_index = self.bump()
            if service is not None:
                self.service_index[service.name] = check.modify_index

    def update_ttl(self, check_id: str, status: str, note: str) -> None:
        check = self.checks.get(check_id)
        if check is None:
            raise KeyError(check_id)
        if check.timer:
            check.timer.cancel()
        self._set_status(check, status, note)
        self._arm(check)

    def _drop_check(self, check_id: str) -> None:
        check = self.checks.pop(check_id, None)
        if check is not None and check.timer:
            check.timer.cancel()

    def deregister(self, service_id: str) -> bool:
        service = self.services.pop(service_id, None)
        if service is None:
            return False
        for check_id in service.checks:
            self._drop_check(check_id)
        self.touch_service(service.name)
        return True

    def reap(self) -> None:
        """Consul's reaper: remove services whose check stayed critical too long."""
        now = time.monotonic()
        doomed = {
            check.service_id for check in self.checks.values()
            if check.deregister_after is not None and check.critical_since is not None
            and now - check.critical_since > check.deregister_after
        }
        for service_id in doomed:
            self.deregister(service_id)

    def health_index(self, name: str) -> int:
        return self.service_index.get(name, self.services_index)

    # -- KV ------------------------------------------------------------------

    def kv_put(self, key: str, value: bytes, cas: int | None, flags: int) -> bool:
        entry = self.kv.get(key)
        if cas is not None:
            if cas == 0 and entry is not None:
                return False
            if cas != 0 and (entry is None or entry.modify_index != cas):
                return False
        index = self.bump()
        self.kv[key] = KVEntry(value, flags, entry.create_index if entry else index, index)
        self.kv_tombstones.pop(key, None)
        self.kv_index = index
        return True

    def kv_delete(self, key: str, recurse: bool, cas: int | None) -> bool:
        if recurse:
            keys = [k for k in self.kv if k.startswith(key)]
        else:
            entry = self.kv.get(key)
            if cas is not None and (entry is None or cas == 0 or entry.modify_index != cas):
                return False
            keys = [key] if entry is not None else []
        if not keys:
            return True
        index = self.bump()
        for k in keys:
            del self.kv[k]
            self.kv_tombstones[k] = index
        self.kv_index = index
        return True

    def kv_index_for(self, key: str, recurse: bool) -> int:
        if recurse:
            indexes = [e.modify_index for k, e in self.kv.items() if k.startswith(key)]
            indexes += [i for k, i in self.kv_tombstones.items() if k.startswith(key)]
        else:
            entry = self.kv.get(key)
            indexes = [entry.modify_index] if entry else []
            if key in self.kv_tombstones:
                indexes.append(self.kv_tombstones[key])
        return max(indexes) if indexes else self.kv_index

    # -- JSON shapes -------------------------------------------------------

    def node_json(self) -> dict[str, Any]:
        return {"ID": self.node_id, "Node": NODE, "Address": "127.0.0.1",
                "Datacenter": DATACENTER, "TaggedAddresses": {"lan": "127.0.0.1",
                                                               "wan": "127.0.0.1"},
                "Meta": {"consul-network-segment": ""}, "CreateIndex": 1, "ModifyIndex": 1}

    def agent_service_json(self, service: Service) -> dict[str, Any]:
        return {"ID": service.id, "Service": service.name, "Tags": list(service.tags),
                "Meta": dict(service.meta), "Port": service.port, "Address": service.address,
                "Weights": dict(service.weights), "EnableTagOverride": False,
                "Datacenter": DATACENTER}

    def check_json(self, check: Check) -> dict[str, Any]:
        service = self.services.get(check.service_id)
        return {"Node": NODE, "CheckID": check.id, "Name": check.name, "Status": check.status,
                "Notes": check.notes, "Output": check.output, "ServiceID": check.service_id,
                "ServiceName": service.name if service else "",
                "ServiceTags": list(service.tags) if service else [], "Type": "ttl",
                "CreateIndex": check.create_index, "ModifyIndex": check.modify_index}

    def serf_check_json(self) -> dict[str, Any]:
        return {"Node": NODE, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "CreateIndex": 1, "ModifyIndex": 1}

    def health_entries(self, name: str) -> list[dict[str, Any]]:
        entries = []
        if name == "consul":
            consul = Service("consul", "consul", "", 8300, [], {"raft_version": "3"},
                             {"Passing": 1, "Warning": 1}, [], 1, 1)
            entries.append({"Node": self.node_json(), "Service": self._catalog_service(consul),
                            "Checks": [self.serf_check_json()]})
        for service in sorted(self.services.values(), key=lambda s: s.id):
            if service.name != name:
                continue
            checks = [self.serf_check_json()]
            checks += [self.check_json(self.checks[c]) for c in service.checks if c in self.checks]
            entries.append({"Node": self.node_json(), "Service": self._catalog_service(service),
                            "Checks": checks})
        return entries

    def _catalog_service(self, service: Service) -> dict[str, Any]:
        return {**self.agent_service_json(service), "CreateIndex": service.create_index,
                "ModifyIndex": service.modify_index}

    def catalog_services(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {"consul": []}
        for service in self.services.values():
            tags = names.setdefault(service.name, [])
            tags.extend(t for t in service.tags if t not in tags)
        return names


def _blocking_params(request: Request) -> tuple[int, float]:
    try:
        index = int(request.query_params.get("index", "0") or 0)
    except ValueError:
        raise BadRequest("Invalid index") from None
    wait = DEFAULT_WAIT
    if "wait" in request.query_params:
        wait = parse_duration(request.query_params["wait"])
    wait = min(wait, MAX_WAIT)
    return index, wait + random.uniform(0, wait / 16)


async def _block(state: ConsulState, request: Request, current: Callable[[], int]) -> int:
    """Hold a blocking query until the resource's index passes ?index= or ?wait= runs out."""
    index, wait = _blocking_params(request)
    if index > 0:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while current() <= index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await state.wait_change(remaining)
    return max(current(), 1)


def _indexed(body: Any, index: int, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, headers={
        "X-Consul-Index": str(index), "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0"})


def build_app(state: ConsulState) -> Starlette:
    """The Starlette app serving the double's endpoints over one ConsulState."""

    async def service_register(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        replace = request.query_params.get("replace-existing-checks", "") in ("1", "true")
        state.register(body, replace)
        return PlainTextResponse("")

    async def service_deregister(request: Request) -> Response:
        service_id = request.path_params["service_id"]
        if not state.deregister(service_id):
            return PlainTextResponse(f'Unknown service ID "{service_id}". Ensure that the '
                                     "service ID is passed, not the service name.", 404)
        return PlainTextResponse("")

    async def service_definition(request: Request) -> Response:
        service = state.services.get(request.path_params["service_id"])
        if service is None:
            return PlainTextResponse("unknown service ID: "
                                     f"{request.path_params['service_id']}", 404)
        return JSONResponse(state.agent_service_json(service))

    async def services(request: Request) -> Response:
        return JSONResponse({s.id: state.agent_service_json(s) for s in state.services.values()})

    async def checks(request: Request) -> Response:
        return JSONResponse({c.id: state.check_json(c) for c in state.checks.values()})

    def ttl_update(status: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            check_id = request.path_params["check_id"]
            try:
                state.update_ttl(check_id, status, request.query_params.get("note", ""))
            except KeyError:
                return PlainTextResponse(f'Unknown check ID "{check_id}". Ensure that the check '
                                         "ID is passed, not the check name.", 404)
            return PlainTextResponse("")
        return handler

    async def agent_self(request: Request) -> Response:
        return JSONResponse({
            "Config": {"Datacenter": DATACENTER, "NodeName": NODE, "NodeID": state.node_id,
                       "Server": True, "Version": "1.17.0-double"},
            "Member": {"Name": NODE, "Addr": "127.0.0.1", "Port": 8301, "Status": 1},
        })

    async def leader(request: Request) -> Response:
        return JSONResponse("127.0.0.1:8300")

    async def catalog_services(request: Request) -> Response:
        index = await _block(state, request, lambda: state.services_index)
        return _indexed(state.catalog_services(), index)

    async def health_service(request: Request) -> Response:
        name = request.path_params["name"]
        index = await _block(state, request, lambda: state.health_index(name))
        entries = state.health_entries(name)
        if "passing" in request.query_params:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return _indexed(entries, index)

    async def kv(request: Request) -> Response:
        key = request.path_params["key"]
        params = request.query_params
        recurse = "recurse" in params
        if request.method == "PUT":
            cas = int(params["cas"]) if "cas" in params else None
            ok = state.kv_put(key, await request.body(), cas, int(params.get("flags", "0")))
            return JSONResponse(ok)
        if request.method == "DELETE":
            cas = int(params["cas"]) if "cas" in params else None
            return JSONResponse(state.kv_delete(key, recurse, cas))
        index = await _block(state, request, lambda: state.kv_index_for(key, recurse))
        if recurse:
            items = sorted((k, e) for k, e in state.kv.items() if k.startswith(key))
        else:
            items = [(key, state.kv[key])] if key in state.kv else []
        if not items:
            return Response(status_code=404, headers={"X-Consul-Index": str(index)})
        if "keys" in params:
            return _indexed([k for k, _ in items], index)
        return _indexed([{"LockIndex": 0, "Key": k, "Flags": e.flags,
                          "Value": base64.b64encode(e.value).decode() if e.value else None,
                          "CreateIndex": e.create_index, "ModifyIndex": e.modify_index}
                         for k, e in items], index)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(str(exc), 400)

    routes = [
        Route("/v1/agent/service/register", service_register, methods=["PUT"]),
        Route("/v1/agent/service/deregister/{service_id}", service_deregister, methods=["PUT"]),
        Route("/v1/agent/service/{service_id}", service_definition, methods=["GET"]),
        Route("/v1/agent/services", services, methods=["GET"]),
        Route("/v1/agent/checks", checks, methods=["GET"]),
        Route("/v1/agent/check/pass/{check_id}", ttl_update("passing"), methods=["PUT"]),
        Route("/v1/agent/check/warn/{check_id}", ttl_update("warning"), methods=["PUT"]),
        Route("/v1/agent/check/fail/{check_id}", ttl_update("critical"), methods=["PUT"]),
        Route("/v1/agent/self", agent_self, methods=["GET"]),
        Route("/v1/status/leader", leader, methods=["GET"]),
        Route("/v1/catalog/services", catalog_services, methods=["GET"]),
        Route("/v1/health/service/{name}", health_service, methods=["GET"]),
        Route("/v1/kv/{key:path}", kv, methods=["GET", "PUT", "DELETE"]),
    ]
    return Starlette(routes=routes, exception_handlers={BadRequest: bad_request,
                                                        ValueError: bad_request})


async def serve(port: int, reap_interval: float, min_deregister_after: float) -> None:
    """Serve the double on 127.0.0.1:port (0 = ephemeral) until cancelled."""
    import uvicorn

    state = ConsulState(reap_interval, min_deregister_after)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Go's net/http (Consul) disables Nagle; without this, a response written as headers
    # then body waits for the client's delayed ACK (40 ms) on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(build_app(state), log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    async def reaper() -> None:
        while True:
            await asyncio.sleep(state.reap_interval)
            state.reap()

    reaping = asyncio.create_task(reaper())
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    host, bound = sock.getsockname()[:2]
    print(f"consul double listening on http://{host}:{bound}", flush=True)
    try:
        await serving
    finally:
        reaping.cancel()


def main() -> None:
    """Command line: python -m tests.consul_double [--port N] [--reap-interval S] ..."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reap-interval", type=float, default=30.0,
                        help="seconds between reaper runs (Consul: 30)")
    parser.add_argument("--min-deregister-after", type=float, default=60.0,
                        help="floor for DeregisterCriticalServiceAfter (Consul: 60)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.reap_interval, args.min_deregister_after))


if __name__ == "__main__":
    main()
