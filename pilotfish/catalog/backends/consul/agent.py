"""Consul settings and shapes: the agent's service definitions and health entries as instances."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from pilotfish.catalog.model import Check, Health, Instance, InvalidField

log = logging.getLogger(__name__.rpartition(".")[0])  # the package's logger

T = TypeVar("T")

LEASE_PREFIX = "pilotfish/leases/"
ENTRY_PREFIX = "pilotfish/config/"
META_LEASE = "pilotfish-lease"
META_HEALTH = "pilotfish-health"
CHECK_PREFIX = "pilotfish:"
# A pilotfish check is one Consul TTL check "pilotfish-check:<instance id>:<check id>" (the
# instance id is the check's ServiceID, so a ':' in it is no ambiguity), whose Status is the
# check's (Consul's own DNS and UI agree with pilotfish) and whose Notes hold the whole check
# as JSON (Consul has no field for kind, target, output at registration). Its TTL is long:
# pilotfish decides the status, Consul's TTL clock must never flip it.
CHECKS_PREFIX = "pilotfish-check:"
CHECK_HOLD_TTL = "8760h"
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


def check_id_of(instance_id: str, check_id: str) -> str:
    """The Consul CheckID of one pilotfish check of an instance."""
    return f"{CHECKS_PREFIX}{instance_id}:{check_id}"


def consul_checks(instance: Instance) -> list[dict[str, Any]]:
    """An instance's pilotfish checks as Consul check definitions (see CHECKS_PREFIX)."""
    return [{"CheckID": check_id_of(instance.id, c.id), "Name": c.name or c.id,
             "Notes": json.dumps({**c.to_dict(), "order": n}, separators=(",", ":")),
             "TTL": CHECK_HOLD_TTL, "Status": c.status} for n, c in enumerate(instance.checks)]


def pilotfish_checks(service_id: str, checks: Iterable[Mapping[str, Any]]
                     ) -> tuple[tuple[Check, ...], list[Mapping[str, Any]]]:
    """Split Consul's checks of a service: the pilotfish checks (from their Notes), and the
    rest (the lease check, Consul's own node checks)."""
    prefix = f"{CHECKS_PREFIX}{service_id}:"
    ours: list[tuple[int, Check]] = []
    others: list[Mapping[str, Any]] = []
    for check in checks:
        if not str(check.get("CheckID", "")).startswith(prefix):
            others.append(check)
            continue
        try:
            data = json.loads(str(check.get("Notes") or ""))
            ours.append((int(data.get("order", 0)), Check.from_dict(data)))
        except (InvalidField, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring consul check %s: %s", check.get("CheckID"), exc)
    ours.sort(key=lambda pair: pair[0])  # the order they were registered in
    return tuple(c for _, c in ours), others


def _version(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a health entry that change when the instance does."""
    service = node.get("Service") or {}
    return (service.get("CreateIndex"), service.get("ModifyIndex"),
            (service.get("Meta") or {}).get(META_LEASE), (node.get("Node") or {}).get("Node"),
            tuple((c.get("CheckID"), c.get("Status"), c.get("Notes"))
                  for c in node.get("Checks") or ()))


def _from_health(node: Mapping[str, Any], version: tuple[Any, ...]) -> _Entry | None:
    """One /v1/health/service entry as an instance, its health folded from Consul's checks."""
    instance = _from_agent(node.get("Service") or {})
    if instance is None:
        return None
    checks, others = pilotfish_checks(instance.id, node.get("Checks") or ())
    if checks:
        instance = replace(instance, checks=checks)
    statuses: Iterable[str] = (str(c.get("Status")) for c in others)
    worst: Health = instance.health
    for status in statuses:
        if status == "critical":
            worst = "critical"
        elif status == "warning" and worst == "passing":
            worst = "warning"
    if worst != instance.health:
        instance = replace(instance, health=worst)
    return _Entry(instance, str((node.get("Node") or {}).get("Node", "")), version)
