"""One container's inspect output turned into the instances to register, or why not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pilotfish.catalog.model import Health, Instance, InvalidField
from pilotfish.sidecar.addresses import Details, Endpoint, Skip, endpoints, own_address
from pilotfish.sidecar.check_labels import CheckTarget, checks
from pilotfish.sidecar.health import container_health
from pilotfish.sidecar.labels import PortSettings, listed, port_settings, raw_settings, truthy
from pilotfish.sidecar.naming import (
    container_name,
    default_service_name,
    explicit_service_name,
    grouped_name,
    instance_id,
)


@dataclass(frozen=True, slots=True)
class Rules:
    """How this sidecar registers containers (its flags)."""

    sidecar: str  # the first part of every instance id
    advertise_ip: str
    internal: bool = False  # container addresses and exposed ports (Registrator's -internal)
    explicit: bool = False  # only containers that set SERVICE_NAME


@dataclass(frozen=True, slots=True)
class Decision:
    """What to register for a container, and what was skipped with why."""

    instances: tuple[Instance, ...] = ()
    skipped: tuple[Skip, ...] = ()
    joins: str | None = None  # the container whose network this one shares, if any
    renamed: tuple[tuple[str, str], ...] = ()  # (SERVICE_NAME as set, the DNS label used)


@dataclass
class _Port:
    endpoint: Endpoint
    settings: PortSettings
    skipped: list[Skip] = field(default_factory=list)


def joined_container(details: Details) -> str | None:
    """The id or name in a `container:<id>` network mode, else None."""
    mode = (details.get("HostConfig") or {}).get("NetworkMode") or ""
    return mode.partition(":")[2] or None if mode.startswith("container:") else None


def decide(details: Details, rules: Rules,
           joined: Callable[[str], Details | None] | None = None) -> Decision:
    """The instances a running container gets (none when it does not run)."""
    joins = joined_container(details)
    health = container_health(details.get("State") or {})
    if health is None:
        return Decision(joins=joins)
    config = details.get("Config") or {}
    raw = raw_settings(config.get("Env"), config.get("Labels"))
    if truthy(raw.get("ignore", "")):
        return Decision(skipped=(Skip("ignored", "SERVICE_IGNORE is set"),), joins=joins)
    found, skipped = endpoints(details, rules.advertise_ip, rules.internal, joined)
    own = own_address(details, joined)
    group = len(found) > 1
    name = container_name(details.get("Name") or "")
    instances: list[Instance] = []
    renamed: dict[str, str] = {}
    for endpoint in found:
        settings = port_settings(raw, endpoint.port)
        target = CheckTarget(own, endpoint.port) if own else CheckTarget(
            endpoint.address, endpoint.host_port)
        made = _instance(endpoint, settings, rules, name, config.get("Image") or "", group,
                         health, renamed, target)
        if isinstance(made, Skip):
            skipped.append(made)
        else:
            instances.append(made)
    return Decision(tuple(instances), tuple(skipped), joins, tuple(renamed.items()))


def _instance(endpoint: Endpoint, settings: PortSettings, rules: Rules, container: str,
              image: str, group: bool, health: Health,
              renamed: dict[str, str], target: CheckTarget) -> Instance | Skip:
    where = f"port {endpoint.port}/{endpoint.protocol}"
    if truthy(settings.get("ignore")):
        return Skip("ignored", f"{where}: SERVICE_{endpoint.port}_IGNORE is set")
    name = settings.get("name")
    if name:
        try:
            label = explicit_service_name(name)
        except InvalidField as exc:
            return Skip("invalid-name", f"{where}: SERVICE_NAME {exc.message}")
        if label != name.lower():
            renamed[name] = label
        name = label
    elif rules.explicit:
        return Skip("explicit", f"{where}: no SERVICE_NAME and --explicit is set")
    else:
        default = default_service_name(image)
        if default is None:
            return Skip("invalid-name", f"{where}: image {image!r} gives no DNS-label name; "
                                        "set SERVICE_NAME")
        name = default
    if group and "name" not in settings.from_port:
        name = grouped_name(name, endpoint.port)
    own_id = settings.get("id")
    if not own_id:
        own_id = instance_id(rules.sidecar, container, endpoint.port, endpoint.protocol)
    elif group and "id" not in settings.from_port:
        own_id = f"{own_id}:{endpoint.port}" + (":udp" if endpoint.protocol == "udp" else "")
    tags = listed(settings.get("tags")) + (("udp",) if endpoint.protocol == "udp" else ())
    weight_text = settings.get("weight") or "1"
    try:
        if not weight_text.isdigit():
            raise InvalidField("weight", f"{weight_text!r} is not a whole number")
        return Instance(service=name, id=own_id, address=endpoint.address,
                        port=endpoint.host_port, lease="unset", tags=tags,
                        meta=settings.meta, weight=int(weight_text),
                        health=health, checks=checks(settings, target))
    except InvalidField as exc:
        return Skip("invalid-setting", f"{where}: SERVICE_{exc.field.upper()}: {exc.message}")
