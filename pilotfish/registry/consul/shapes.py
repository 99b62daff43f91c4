"""Consul's JSON shapes for pilotfish instances, and the node each instance is shown on.

Consul places every service instance on a node (an agent's host). A pilotfish instance has none,
so one is derived from what the catalog knows, stably:

- the node's **name** is `<owner>-<address>`, the owner cut at its first `/` (a sidecar's
  owner is `<sidecar id>/<engine id>`: the node is named after the sidecar id, as a Consul node
  after its host) and every run of characters outside `A-Za-z0-9-` turned into `-`
  (`host-a/<engine id>` + `10.0.0.5` -> `host-a-10-0-0-5`; an IPv6 address is written out in
  full, `fd00::5` -> `fd00-0000-0000-0000-0000-0000-0000-0005`), or just the address part
  (`10-0-0-5`) when the lease has no owner or is an instance's own lease (registered through
  the API with a `ttl`);
- its **ID** is a UUID (version 5) of the whole owner and the address, its **Address** the
  instance's address, its `Meta` says `pilotfish-owner` (the whole owner).

So every instance of one registrar (a sidecar's host) at one address shares a node, and the same
instance keeps its node across restarts of pilotfish. Health: one `serfHealth` check (passing:
the node is in the catalog because its lease is alive), one `service:<id>` TTL check whose
status is the instance's `health` (the container's own state; a lease about to lapse is still
passing), and one check per pilotfish check of the instance (`<id>:<check id>`).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time
import uuid
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pilotfish.catalog.interface import Catalog, Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.registry.bodies import OWN_LEASE_PREFIX
from pilotfish.registry.consul.pacing import Pacer

NODE_NAMESPACE = uuid.UUID("5b0c6f9e-2f4e-4a57-9d41-7d6a1c9e3f10")
OWNER_META = "pilotfish-owner"
_NOT_LABEL = re.compile(r"[^A-Za-z0-9-]+")
MAX_LOOKUPS = 32  # concurrent lease reads when many leases are new


@dataclass(frozen=True, slots=True)
class Node:
    """The Consul node an instance is shown on: derived from its lease owner and address."""

    name: str
    id: str
    address: str
    owner: str


@functools.lru_cache(maxsize=65536)
def derive_node(owner: str, address: str) -> Node:
    """The node for an instance of this lease owner at this address (see the module doc)."""
    holder = "" if owner.startswith(OWN_LEASE_PREFIX) else owner
    address_part = _address_label(address)
    owner_part = _NOT_LABEL.sub("-", holder.partition("/")[0]).strip("-")[:63]
    name = f"{owner_part}-{address_part}" if owner_part else address_part
    node_id = str(uuid.uuid5(NODE_NAMESPACE, f"{holder}\n{address}"))
    return Node(name=name, id=node_id, address=address, owner=holder)


def _address_label(address: str) -> str:
    """10.0.0.5 -> 10-0-0-5; IPv6 written out in full (fd00::5 -> fd00-0000-...-0005)."""
    try:
        written = ipaddress.ip_address(address).exploded
    except ValueError:
        written = address
    return _NOT_LABEL.sub("-", written).strip("-") or "node"


class Versions:
    """CreateIndex/ModifyIndex per key: set when a key appears, moved when its value changes."""

    def __init__(self) -> None:
        self._seen: dict[Hashable, tuple[object, int, int]] = {}

    def observe(self, key: Hashable, value: object, index: int) -> tuple[int, int]:
        """(create, modify) for a key holding `value` at catalog `index`."""
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = (value, index, index)
            return index, index
        old, create, modify = seen
        if old != value:
            self._seen[key] = (value, create, index)
            return create, index
        return create, modify

    def keep_only(self, keys: Iterable[Hashable]) -> None:
        """Forget keys that are gone, so the table does not grow forever."""
        alive = set(keys)
        for key in [k for k in self._seen if k not in alive]:
            del self._seen[key]


@dataclass(frozen=True, slots=True)
class Entry:
    """One instance as Consul shows it: on a node, with create and modify indexes."""

    instance: Instance
    node: Node
    create_index: int
    modify_index: int
    node_create: int
    node_modify: int


class Model:
    """Every instance with its node and indexes, for one catalog index: what each answer reads."""

    def __init__(self, index: int, entries: Iterable[Entry], datacenter: str) -> None:
        self.index = max(index, 1)  # Consul never hands out index 0
        self.datacenter = datacenter
        self.entries = tuple(sorted(entries, key=lambda e: (e.instance.service, e.node.name,
                                                            e.instance.id)))
        services: dict[str, list[Entry]] = {}
        nodes: dict[str, Entry] = {}
        for entry in self.entries:
            services.setdefault(entry.instance.service, []).append(entry)
            nodes.setdefault(entry.node.name, entry)
        self.services = {name: tuple(group) for name, group in services.items()}
        self.nodes = dict(sorted(nodes.items()))

    def service(self, name: str) -> tuple[Entry, ...]:
        """The entries of one service (Consul service names are matched case-insensitively)."""
        return self.services.get(name.lower(), ())


class ModelBuilder:
    """Turns catalog snapshots into Models, remembering lease owners and per-key indexes."""

    def __init__(self, catalog: Catalog, datacenter: str) -> None:
        self.catalog = catalog
        self.datacenter = datacenter
        self.model = Model(0, (), datacenter)
        self._built_from = -1
        self._owners: dict[str, str] = {}
        self._instances = Versions()
        self._nodes = Versions()
        self._lock = asyncio.Lock()

    async def build(self, snapshot: Snapshot) -> Model:
        """The Model for this snapshot (built once per catalog index, whoever asks)."""
        async with self._lock:
            if snapshot.index != self._built_from:
                await self._learn_owners(snapshot)
                self.model = await self._derive(snapshot)
                self._built_from = snapshot.index
            return self.model

    async def _learn_owners(self, snapshot: Snapshot) -> None:
        """Read the owner of every lease not seen before (a lease's owner never changes)."""
        leases = {i.lease for i in snapshot.instances.values()}
        unknown = [lease for lease in leases if lease not in self._owners]
        limit = asyncio.Semaphore(MAX_LOOKUPS)

        async def owner_of(lease_id: str) -> None:
            async with limit:
                lease = await self.catalog.lease(lease_id)
            if lease is not None:  # lapsed meanwhile: its instances leave with the next change
                self._owners[lease_id] = lease.owner

        await asyncio.gather(*(owner_of(lease) for lease in unknown))
        for lease_id in [k for k in self._owners if k not in leases]:
            del self._owners[lease_id]

    async def _derive(self, snapshot: Snapshot) -> Model:
        index = max(snapshot.index, 1)
        entries = []
        pacer = Pacer()  # 2,000 instances take ~30 ms: not in one turn of the loop
        for instance in snapshot.instances.values():
            await pacer.step()
            node = derive_node(self._owners.get(instance.lease, ""), instance.address)
            create, modify = self._instances.observe(instance.id, (instance, node), index)
            node_create, node_modify = self._nodes.observe(node.name, node, index)
            entries.append(Entry(instance, node, create, modify, node_create, node_modify))
        self._instances.keep_only(e.instance.id for e in entries)
        self._nodes.keep_only(e.node.name for e in entries)
        return Model(snapshot.index, entries, self.datacenter)


# JSON shapes (field names and types as Consul documents them)


def _family(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def node_tagged_addresses(node: Node) -> dict[str, str]:
    """Node TaggedAddresses: string values, as Consul's agent fills them in."""
    family = _family(node.address)
    return {"lan": node.address, f"lan_{family}": node.address,
            "wan": node.address, f"wan_{family}": node.address}


def node_meta(node: Node) -> dict[str, str]:
    """Node Meta: Consul's network segment key, and who holds the lease."""
    meta = {"consul-network-segment": ""}
    if node.owner:
        meta[OWNER_META] = node.owner
    return meta


def node_json(entry: Entry, datacenter: str) -> dict[str, Any]:
    """A node as /v1/catalog/nodes and the `Node` of a health entry show it."""
    node = entry.node
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": datacenter,
        "TaggedAddresses": node_tagged_addresses(node),
        "Meta": node_meta(node),
        "CreateIndex": entry.node_create,
        "ModifyIndex": entry.node_modify,
    }


def no_proxy() -> dict[str, Any]:
    """The proxy settings of a service that is not a Connect proxy (every pilotfish instance)."""
    return {"DestinationServiceName": "", "DestinationServiceID": "", "LocalServiceAddress": "",
            "LocalServicePort": 0, "Config": None, "Upstreams": None, "Mode": "",
            "MeshGateway": {}, "Expose": {}}


def _weights(instance: Instance) -> dict[str, int]:
    return {"Passing": instance.weight, "Warning": 1}


def _service_tagged_addresses(instance: Instance) -> dict[str, dict[str, Any]]:
    family = _family(instance.address)
    where = {"Address": instance.address, "Port": instance.port}
    return {f"lan_{family}": dict(where), f"wan_{family}": dict(where)}


def service_json(entry: Entry) -> dict[str, Any]:
    """The `Service` of a health entry (an agent service definition)."""
    instance = entry.instance
    return {
        "ID": instance.id,
        "Service": instance.service,
        "Tags": list(instance.tags),
        "Address": instance.address,
        "TaggedAddresses": _service_tagged_addresses(instance),
        "Meta": dict(instance.meta),
        "Port": instance.port,
        "Weights": _weights(instance),
        "EnableTagOverride": False,
        "Proxy": no_proxy(),
        "Connect": {"Native": False, "Proxy": None},
        "Kind": "",
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }


def _check(entry: Entry, check_id: str, name: str, status: str, output: str,
           service: bool) -> dict[str, Any]:
    instance = entry.instance
    return {
        "Node": entry.node.name,
        "CheckID": check_id,
        "Name": name,
        "Status": status,
        "Notes": "",
        "Output": output,
        "ServiceID": instance.id if service else "",
        "ServiceName": instance.service if service else "",
        "ServiceTags": list(instance.tags) if service else [],
        "Type": "ttl" if service else "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": entry.create_index if service else entry.node_create,
        "ModifyIndex": entry.modify_index if service else entry.node_modify,
    }


CHECK_TYPES = {"http": "http", "https": "http", "tcp": "tcp", "script": "script", "ttl": "ttl",
               "docker": "docker", "sidecar": ""}


def _duration(seconds: float) -> str:
    """A Consul duration ("10s", "1.5s"); "" for none."""
    return f"{seconds:g}s" if seconds else ""


def checks_json(entry: Entry, now: float | None = None) -> list[dict[str, Any]]:
    """The node's serfHealth check, the instance's own check (status: its health, the
    container's state), then one per pilotfish check, CheckID `<instance id>:<check id>`."""
    instance = entry.instance
    shaped = [
        _check(entry, "serfHealth", "Serf Health Status", "passing",
               "Agent alive and reachable", service=False),
        _check(entry, f"service:{instance.id}", f"Service '{instance.service}' check",
               instance.health, f"pilotfish: instance health is {instance.health}",
               service=True),
    ]
    moment = time.time() if now is None else now
    for check in instance.checks:
        item = _check(entry, f"{instance.id}:{check.id}", check.name, check.status_at(moment),
                      check.output, service=True)
        item.update(Type=CHECK_TYPES[check.kind], Interval=_duration(check.interval),
                    Timeout=_duration(check.timeout))
        if check.kind == "ttl":
            item["Definition"] = {"TTL": _duration(check.ttl)}
        shaped.append(item)
    return shaped


def health_entry_json(entry: Entry, datacenter: str) -> dict[str, Any]:
    """One item of /v1/health/service/{name}."""
    return {"Node": node_json(entry, datacenter), "Service": service_json(entry),
            "Checks": checks_json(entry)}


def catalog_service_json(entry: Entry, datacenter: str) -> dict[str, Any]:
    """One item of /v1/catalog/service/{name}: node and service fields side by side."""
    instance, node = entry.instance, entry.node
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": datacenter,
        "TaggedAddresses": node_tagged_addresses(node),
        "NodeMeta": node_meta(node),
        "ServiceKind": "",
        "ServiceID": instance.id,
        "ServiceName": instance.service,
        "ServiceTags": list(instance.tags),
        "ServiceAddress": instance.address,
        "ServiceTaggedAddresses": _service_tagged_addresses(instance),
        "ServiceWeights": _weights(instance),
        "ServiceMeta": dict(instance.meta),
        "ServicePort": instance.port,
        "ServiceEnableTagOverride": False,
        "ServiceProxy": no_proxy(),
        "ServiceConnect": {"Native": False, "Proxy": None},
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }


def services_json(groups: Mapping[str, Iterable[Entry]]) -> dict[str, list[str]]:
    """/v1/catalog/services: each service name and every tag any of its instances carries."""
    return {name: sorted({tag for e in entries for tag in e.instance.tags})
            for name, entries in sorted(groups.items())}


def agent_self_json(datacenter: str, node_name: str, address: str) -> dict[str, Any]:
    """/v1/agent/self: enough of an agent for tools that learn the datacenter from it."""
    node_id = str(uuid.uuid5(NODE_NAMESPACE, f"agent\n{node_name}"))
    return {
        "Config": {
            "Datacenter": datacenter,
            "PrimaryDatacenter": datacenter,
            "NodeName": node_name,
            "NodeID": node_id,
            "Server": True,
            "Revision": "pilotfish",
            "Version": CONSUL_API_VERSION,
        },
        "DebugConfig": {},
        "Coord": {"Adjustment": 0, "Error": 1.5, "Height": 1e-05, "Vec": [0.0] * 8},
        "Member": {
            "Name": node_name,
            "Addr": address,
            "Port": 8301,
            "Tags": {"dc": datacenter, "id": node_id, "role": "consul", "vsn": "2"},
            "Status": 1,
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        },
        "Meta": {"pilotfish": "true"},
    }


CONSUL_API_VERSION = "1.15.0"
"""The Consul release whose read API this imitates (reported by /v1/agent/self)."""
