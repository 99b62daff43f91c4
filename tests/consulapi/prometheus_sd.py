"""Prometheus 2.42's Consul service discovery, transcribed: the requests it makes, the Go types it
decodes answers into, and the target labels it builds (discovery/consul/consul.go upstream).

Debian's Prometheus 2.42 is built without Consul SD (its changelog: "Disable Consul SD until its
Debian package is back in shape"; a config with `consul_sd_configs` fails to load), and no other
build can be installed on these machines. This client follows the upstream code step by step so
the tests can check what a real Prometheus would see: /v1/agent/self for the datacenter, a
blocking watch on /v1/catalog/services, one blocking watch per service on
/v1/health/service/<name>, and "no change" whenever X-Consul-Index did not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import quote

import httpx

WATCH_TIMEOUT = "120000ms"  # Prometheus's watchTimeout (2m), as the Go client sends it
_LABEL = re.compile(r"[^a-zA-Z0-9_]")

# Go types the Consul API client decodes into: a field of the wrong JSON type fails the decode
# (and Prometheus logs an error and retries); fields it does not know are ignored.
STR, INT, BOOL = "string", "int", "bool"
STRINGS: Any = [STR]
STRING_MAP: Any = {"*": STR}
NODE: Any = {"ID": STR, "Node": STR, "Address": STR, "Datacenter": STR,
             "TaggedAddresses": STRING_MAP, "Meta": STRING_MAP, "CreateIndex": INT,
             "ModifyIndex": INT}
AGENT_SERVICE: Any = {
    "Kind": STR, "ID": STR, "Service": STR, "Tags": STRINGS, "Meta": STRING_MAP, "Port": INT,
    "Address": STR, "TaggedAddresses": {"*": {"Address": STR, "Port": INT}},
    "Weights": {"Passing": INT, "Warning": INT}, "EnableTagOverride": BOOL,
    "CreateIndex": INT, "ModifyIndex": INT,
    "Proxy": {"DestinationServiceName": STR, "DestinationServiceID": STR,
              "LocalServiceAddress": STR, "LocalServicePort": INT, "Mode": STR,
              "Config": {"*": None}, "MeshGateway": {"Mode": STR},
              "Expose": {"Checks": BOOL}},
    "Connect": {"Native": BOOL},
}
HEALTH_CHECK: Any = {"Node": STR, "CheckID": STR, "Name": STR, "Status": STR, "Notes": STR,
                     "Output": STR, "ServiceID": STR, "ServiceName": STR,
                     "ServiceTags": STRINGS, "Type": STR, "Interval": STR, "Timeout": STR,
                     "ExposedPort": INT, "CreateIndex": INT, "ModifyIndex": INT}
SERVICE_ENTRY: Any = {"Node": NODE, "Service": AGENT_SERVICE, "Checks": [HEALTH_CHECK]}


class DecodeError(AssertionError):
    """An answer Go's encoding/json would refuse for the type the Consul client uses."""


def go_decode(value: Any, kind: Any, path: str = "$") -> None:
    """Check that encoding/json could decode `value` into the Go type described by `kind`."""
    if kind is None or value is None:  # interface{}, or null (a zero value) always decodes
        return
    if kind == STR and not isinstance(value, str):
        raise DecodeError(f"{path}: {value!r} into a Go string")
    if kind == INT and (isinstance(value, bool) or not isinstance(value, int)):
        raise DecodeError(f"{path}: {value!r} into a Go int")
    if kind == BOOL and not isinstance(value, bool):
        raise DecodeError(f"{path}: {value!r} into a Go bool")
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise DecodeError(f"{path}: {value!r} into a Go slice")
        for n, item in enumerate(value):
            go_decode(item, kind[0], f"{path}[{n}]")
    elif isinstance(kind, dict):
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: {value!r} into a Go map or struct")
        for key, item in value.items():
            if "*" in kind:
                go_decode(item, kind["*"], f"{path}[{key}]")
            else:  # struct: Go matches field names case-insensitively and ignores the rest
                field = next((k for k in kind if k.lower() == key.lower()), None)
                if field is not None:
                    go_decode(item, kind[field], f"{path}.{key}")


def aggregated_status(checks: list[dict[str, Any]]) -> str:
    """api.HealthChecks.AggregatedStatus: maintenance > critical > warning > passing."""
    statuses = {c["Status"] for c in checks}
    if any(c["CheckID"] in ("_node_maintenance",) or
           c["CheckID"].startswith("_service_maintenance:") for c in checks):
        return "maintenance"
    for status in ("critical", "warning", "passing"):
        if status in statuses:
            return status
    return "passing"


class ConsulSD:
    """The target groups Prometheus's consul_sd_configs would build from a Consul API at `url`."""

    def __init__(self, url: str, refresh: float = 0.2, token: str | None = None) -> None:
        headers = {"X-Consul-Token": token} if token else {}
        self.http = httpx.AsyncClient(base_url=url, timeout=135, headers=headers)
        self.refresh = refresh
        self.datacenter = ""
        self.groups: dict[str, list[dict[str, str]]] = {}
        self.errors: list[str] = []  # what Prometheus would log as "Error refreshing ..."
        self.changed = asyncio.Event()
        self._services: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def targets(self) -> dict[str, dict[str, str]]:
        """Every target's labels, by __meta_consul_service_id."""
        return {t["__meta_consul_service_id"]: t for g in self.groups.values() for t in g}

    async def start(self) -> None:
        """Begin discovering, as Prometheus's Run() does."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Cancel every watch and close the connection pool."""
        for task in [*self._services.values(), self._task]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.http.aclose()

    async def _get(self, path: str, index: int, **params: Any) -> tuple[Any, int]:
        """One Consul API read as the Go client makes it, with its query metadata checks."""
        query: dict[str, Any] = dict(params)
        if index:
            query |= {"index": str(index), "wait": WATCH_TIMEOUT}
        response = await self.http.get(path, params=query)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        headers = response.headers
        last_index = int(headers["X-Consul-Index"])  # parseQueryMeta: a uint64, required
        int(headers["X-Consul-LastContact"])
        assert headers["X-Consul-KnownLeader"] in ("true", "false")
        return response.json(), last_index

    async def _run(self) -> None:
        while not self.datacenter:  # Prometheus's initialize(): until the agent answers
            try:
                response = await self.http.get("/v1/agent/self")  # Self(): a map of maps
                self_info = response.json()
                go_decode(self_info, {"*": {"*": None}}, "agent.self")
                datacenter = self_info["Config"]["Datacenter"]
                assert isinstance(datacenter, str), "invalid value for Config.Datacenter"
                self.datacenter = datacenter
            except Exception as exc:  # logged by Prometheus, retried
                self.errors.append(f"agent/self: {exc!r}")
                await asyncio.sleep(self.refresh)
        last_index = 0
        while True:
            try:
                services, index = await self._get("/v1/catalog/services", last_index)
                go_decode(services, {"*": STRINGS}, "catalog.services")
            except Exception as exc:
                self.errors.append(f"catalog/services: {exc!r}")
                index = last_index
            if index != last_index:  # the same index: the watch timed out with no update
                last_index = index
                for name in services:
                    if name not in self._services:
                        self._services[name] = asyncio.create_task(self._watch_service(name))
                for name in [n for n in self._services if n not in services]:
                    self._services.pop(name).cancel()
                    self.groups.pop(name, None)
                    self.changed.set()
            await asyncio.sleep(self.refresh)

    async def _watch_service(self, name: str) -> None:
        last_index = 0
        while True:
            try:
                entries, index = await self._get(
                    f"/v1/health/service/{quote(name, safe='')}", last_index)
                go_decode(entries, [SERVICE_ENTRY], f"health.service({name})")
            except Exception as exc:
                self.errors.append(f"health/service/{name}: {exc!r}")
                index = last_index
            if index != last_index:
                last_index = index
                self.groups[name] = [self._labels(name, entry) for entry in entries]
                self.changed.set()
            await asyncio.sleep(self.refresh)

    def _labels(self, name: str, entry: dict[str, Any]) -> dict[str, str]:
        node, service = entry["Node"], entry["Service"]
        host = service["Address"] or node["Address"]
        address = f"[{host}]:{service['Port']}" if ":" in host else f"{host}:{service['Port']}"
        labels = {
            "__address__": address,
            "__meta_consul_address": node["Address"],
            "__meta_consul_dc": self.datacenter,
            "__meta_consul_health": aggregated_status(entry["Checks"]),
            "__meta_consul_node": node["Node"],
            "__meta_consul_service": name,
            "__meta_consul_service_address": service["Address"],
            "__meta_consul_service_id": service["ID"],
            "__meta_consul_service_port": str(service["Port"]),
            "__meta_consul_tags": "," + ",".join(service["Tags"] or []) + ",",
        }
        for key, value in (node.get("Meta") or {}).items():
            labels["__meta_consul_metadata_" + _LABEL.sub("_", key)] = value
        for key, value in (service.get("Meta") or {}).items():
            labels["__meta_consul_service_metadata_" + _LABEL.sub("_", key)] = value
        for key, value in (node.get("TaggedAddresses") or {}).items():
            labels["__meta_consul_tagged_address_" + _LABEL.sub("_", key)] = value
        return labels
