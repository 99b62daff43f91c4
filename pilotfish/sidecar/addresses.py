"""Where a container is reached from other hosts, by network mode.

- `host`: the advertised IP and the container's exposed ports (or those named by the
  SERVICE_PORT setting, for images that expose none);
- bridge and user-defined networks: the advertised IP and the host port of each published
  port, including ports Docker allocated with `-P`; with `internal`, the container's own IP
  on its network and the exposed port (Registrator's `-internal`);
- `container:<id>`: the endpoints of the container whose network it joined, as long as that
  is the network it joined: when the owner restarts it gets a new namespace while Docker
  leaves the joiner in the old, dead one, so a joiner started before its owner's current
  start is skipped until it is itself restarted (an owner on the host network keeps one);
- `none`: nothing (skipped).

A port published on a specific host address is advertised there, except a loopback address
unless the advertised IP is one itself: the user asked for loopback explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pilotfish.catalog.model import unusable
from pilotfish.sidecar.labels import listed, raw_settings

Details = Mapping[str, Any]
"""`docker inspect` output for one container."""

WILDCARDS = ("", "0.0.0.0", "::")
_STARTED_AT = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One port of a container as others reach it."""

    port: int  # the container's port (what SERVICE_<port>_* and ids name)
    protocol: str  # tcp or udp
    address: str
    host_port: int  # the port others connect to


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a container, or one of its ports, is not registered."""

    reason: str  # a short key, the label of the skipped metric
    detail: str


def _port_key(key: str) -> tuple[int, str] | None:
    """"80/tcp" -> (80, "tcp"); None for what is not a port."""
    number, _, protocol = key.partition("/")
    if not number.isdigit() or not 0 < int(number) < 65536:
        return None
    return int(number), (protocol or "tcp").lower()


def exposed_ports(details: Details) -> list[tuple[int, str]]:
    """The container's exposed ports, and those the SERVICE_PORT setting names."""
    config = details.get("Config") or {}
    ports = {p for key in (config.get("ExposedPorts") or {}) if (p := _port_key(key))}
    named = raw_settings(config.get("Env"), config.get("Labels")).get("port", "")
    ports |= {p for item in listed(named) if (p := _port_key(item))}
    return sorted(ports)


def is_loopback(address: str) -> bool:
    """Whether an address is a loopback address."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def unusable_address(address: str) -> str | None:
    """Why no instance can be registered at an address Docker reports (None when one can)."""
    try:
        return unusable(ipaddress.ip_address(address))
    except ValueError:
        return "not an IP address"


def started_at(details: Details) -> tuple[str, int] | None:
    """When the container last started, comparable (second, nanosecond), from Docker's UTC
    RFC 3339 time; None when unknown or never (Go's zero time)."""
    match = _STARTED_AT.fullmatch(str((details.get("State") or {}).get("StartedAt") or ""))
    if match is None or match[1].startswith("0001-"):
        return None
    return match[1], int((match[2] or "0").ljust(9, "0"))


def in_dead_namespace(joiner: Details, owner: Details) -> bool:
    """Whether a `container:<owner>` container still sits in a namespace its owner left.

    The owner restarted after the joiner started: Docker gave the owner a new network
    namespace and left the joiner where it was. An owner on the host network has no namespace
    of its own to lose. Unknown start times (a container being started now) count as current.
    """
    if (owner.get("HostConfig") or {}).get("NetworkMode") == "host":
        return False
    joined, restarted = started_at(joiner), started_at(owner)
    return joined is not None and restarted is not None and joined < restarted


def _binding(bindings: list[Mapping[str, str]], advertise_ip: str) -> Mapping[str, str]:
    """The published binding to advertise: the one of the advertised IP's family if any."""
    v6 = ":" in advertise_ip
    for binding in bindings:
        if (":" in binding.get("HostIp", "")) == v6:
            return binding
    return bindings[0]


def _published(details: Details, advertise_ip: str) -> tuple[list[Endpoint], list[Skip]]:
    ports = (details.get("NetworkSettings") or {}).get("Ports") or {}
    found: list[Endpoint] = []
    skipped: list[Skip] = []
    for key, bindings in sorted(ports.items()):
        port = _port_key(key)
        if port is None:
            continue
        if not bindings:
            skipped.append(Skip("unpublished", f"port {key} is not published on the host"))
            continue
        binding = _binding(bindings, advertise_ip)
        host_ip = binding.get("HostIp", "")
        address = advertise_ip if host_ip in WILDCARDS else host_ip
        if is_loopback(address) and not is_loopback(advertise_ip):
            skipped.append(Skip("loopback", f"port {key} is published on {host_ip} only"))
            continue
        if (why := unusable_address(address)) is not None:
            skipped.append(Skip("unusable-address",
                                f"port {key} is published on {address[:64]!r}: {why}"))
            continue
        found.append(Endpoint(port[0], port[1], address, int(binding.get("HostPort") or 0)))
    return [e for e in found if e.host_port], skipped


def container_address(details: Details) -> str:
    """The container's own IP on its network (the one its network mode names first), or ""."""
    settings = details.get("NetworkSettings") or {}
    networks = settings.get("Networks") or {}
    mode = (details.get("HostConfig") or {}).get("NetworkMode", "")
    ordered = sorted(networks.items(), key=lambda item: (item[0] != mode, item[0]))
    return str(next((n.get("IPAddress") for _, n in ordered if n.get("IPAddress")),
                    settings.get("IPAddress") or ""))


def own_address(details: Details, joined: Callable[[str], Details | None] | None = None,
                depth: int = 0) -> str | None:
    """Where the container itself listens, as seen from this host: its IP on its network
    (a `container:<id>` one: that container's); None on the host network (the advertised
    address is its own) or when unknown."""
    mode = (details.get("HostConfig") or {}).get("NetworkMode") or "default"
    if mode == "host":
        return None
    if mode.startswith("container:"):
        target = joined(mode.partition(":")[2]) if joined is not None else None
        return None if target is None or depth > 2 else own_address(target, joined, depth + 1)
    address = container_address(details)
    return address if address and unusable_address(address) is None else None


def _internal(details: Details) -> tuple[list[Endpoint], list[Skip]]:
    settings = details.get("NetworkSettings") or {}
    address = container_address(details)
    if not address:
        return [], [Skip("no-address", "the container has no IP address on its networks")]
    if (why := unusable_address(address)) is not None:
        return [], [Skip("unusable-address", f"Docker reports address {address[:64]!r}: {why}")]
    ports = set(exposed_ports(details))
    ports |= {p for key in (settings.get("Ports") or {}) if (p := _port_key(key))}
    return [Endpoint(port, protocol, address, port) for port, protocol in sorted(ports)], []


def endpoints(details: Details, advertise_ip: str, internal: bool = False,
              joined: Callable[[str], Details | None] | None = None,
              depth: int = 0) -> tuple[list[Endpoint], list[Skip]]:
    """The container's endpoints by its network mode, and the ports it skipped (with why).

    `joined(id)` returns the inspect output of the container a `container:<id>` one shares
    its network with (None if unknown).
    """
    mode = (details.get("HostConfig") or {}).get("NetworkMode") or "default"
    if mode == "none":
        return [], [Skip("network-none", "network mode none: nothing reaches it")]
    if mode == "host":
        found = [Endpoint(port, protocol, advertise_ip, port)
                 for port, protocol in exposed_ports(details)]
        return found, [] if found else [Skip(
            "no-ports", "host network and no exposed port nor SERVICE_PORT setting")]
    if mode.startswith("container:"):
        target = joined(mode.partition(":")[2]) if joined is not None else None
        if target is None or depth > 2:
            return [], [Skip("joined-unknown", f"network {mode}: that container is not known")]
        if in_dead_namespace(details, target):
            return [], [Skip("joined-stale", f"network {mode}: that container restarted after "
                                             "this one joined it, which Docker leaves in the "
                                             "old namespace; restart this one to rejoin")]
        found, skipped = endpoints(target, advertise_ip, internal, joined, depth + 1)
        own = set(exposed_ports(details))
        if own:
            found = [e for e in found if (e.port, e.protocol) in own]
        return found, skipped if found else skipped or [Skip(
            "no-ports", f"network {mode}: that container has no ports to share")]
    if internal:
        return _internal(details)
    found, skipped = _published(details, advertise_ip)
    if not found and not skipped:
        skipped = [Skip("no-ports", "no published ports")]
    return found, skipped

