"""Consul settings and shapes: the agent's service definitions and health entries as instances."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pilotfish.catalog.model import Health, Instance, InvalidField

log = logging.getLogger(__name__.rpartition(".")[0])  # the package's logger

T = TypeVar("T")

LEASE_PREFIX = "pilotfish/leases/"
ENTRY_PREFIX = "pilotfish/config/"
META_LEASE = "pilotfish-lease"
META_HEALTH = "pilotfish-health"
CHECK_PREFIX = "pilotfish:"
CONSUL_MAX_META = 64
DEFAULT_DEREGISTER_AFTER = 60  # Consul's documented minimum for DeregisterCriticalServiceAfter
REQUEST_TIMEOUT = 3.0
WATCH_WAIT = 10.0
LEASE_WAIT = 0.5  # the lease records' blocking query returns at least this often: each
# return proves the cache current, and expiry runs only while it is (see Freshness)
RETRY_DELAY = 0.5
PASS_CONCURRENCY = 64
REAP_PERIOD = 1.0


@dataclass(frozen=True, slots=True)
class _Entry:
    """One pilotfish instance as the health endpoint reported it."""

    instance: Instance
    node: str
    version: tuple[Any, ...] = ()  # what Consul reported, to skip rebuilding unchanged ones


def _from_agent(service: Mapping[str, Any]) -> Instance | None:
    """The pilotfish instance behind an agent service definition (None if not ours)."""
    meta = dict(service.get("Meta") or {})
    lease = meta.pop(META_LEASE, None)
    if lease is None:
        return None
    health = meta.pop(META_HEALTH, "passing")
    weights = service.get("Weights") or {}
    try:
        return Instance(service=service["Service"], id=service["ID"],
                        address=service.get("Address") or "", port=int(service["Port"]),
                        lease=lease, tags=tuple(service.get("Tags") or ()), meta=meta,
                        weight=int(weights.get("Passing", 1)), health=health)
    except (InvalidField, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring consul service %s: %s", service.get("ID"), exc)
        return None


def _version(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a health entry that change when the instance does."""
    service = node.get("Service") or {}
    return (service.get("CreateIndex"), service.get("ModifyIndex"),
            (service.get("Meta") or {}).get(META_LEASE), (node.get("Node") or {}).get("Node"),
            tuple((c.get("CheckID"), c.get("Status")) for c in node.get("Checks") or ()))


def _from_health(node: Mapping[str, Any], version: tuple[Any, ...]) -> _Entry | None:
    """One /v1/health/service entry as an instance, its health folded from Consul's checks."""
    instance = _from_agent(node.get("Service") or {})
    if instance is None:
        return None
    statuses: Iterable[str] = (str(c.get("Status")) for c in node.get("Checks") or ())
    worst: Health = instance.health
    for status in statuses:
        if status == "critical":
            worst = "critical"
        elif status == "warning" and worst == "passing":
            worst = "warning"
    if worst != instance.health:
        instance = replace(instance, health=worst)
    return _Entry(instance, str((node.get("Node") or {}).get("Node", "")), version)
