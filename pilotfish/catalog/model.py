"""Instances and leases: the values every backend stores, validated once at construction."""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Health = Literal["passing", "warning", "critical"]
HEALTH_STATES: tuple[Health, ...] = ("passing", "warning", "critical")
CheckKind = Literal["http", "https", "tcp", "script", "ttl", "docker", "sidecar"]
CHECK_KINDS: tuple[CheckKind, ...] = ("http", "https", "tcp", "script", "ttl", "docker", "sidecar")
"""How a check learns its status: probed by the sidecar (http, https, tcp, script), reported
by the app (ttl), read from Docker (docker: HEALTHCHECK, kill/stop) or set by the sidecar about
itself (sidecar: a bad check label, for instance)."""

MIN_TTL = 2
MAX_TTL = 86_400
MAX_TAGS = 64
MAX_TAG_LENGTH = 255
MAX_META = 64
MAX_META_KEY = 128
MAX_META_VALUE = 512
MAX_OWNER = 256
MAX_CHECKS = 32
MAX_CHECK_OUTPUT = 4096  # Consul's check_output_max_size
MAX_CHECK_TARGET = 1024
MAX_CHECK_SECONDS = 86_400.0
BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# Patterns are matched whole (fullmatch) and on ASCII only: `$` would let "web\n" through, and
# lower-casing first would fold a Kelvin sign into "k". The OpenAPI schema publishes these.
SERVICE_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# ':' for Registrator-style ids (host:container:port), which sidecar users already have.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
META_KEY_PATTERN = r"[A-Za-z0-9_-]{1,128}"
TAG_PATTERN = r"[!-~]{1,255}"
OWNER_PATTERN = r"[ -~]{0,256}"
# SRV priority (RFC 2782: 0-65535) as DNS reads it from meta, in plain ASCII digits.
PRIORITY_PATTERN = (r"0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                    r"|655[0-2][0-9]|6553[0-5])")
PRIORITY_KEY = "priority"
# Addresses no instance can have (see `unusable`), in every textual form an ipv4/ipv6 literal
# takes: unspecified (also ::0.0.0.0), broadcast, multicast, and their IPv4-mapped forms.
_MAPPED = r"^[0:]*:[fF]{4}:"
UNUSABLE_ADDRESS_PATTERNS = (
    r"^[0:]+$", r"^[0:]*0\.0\.0\.0$", r"^255\.255\.255\.255$", r"^2(2[4-9]|3[0-9])\.",
    r"^[fF]{2}[0-9a-fA-F]{2}:",
    _MAPPED + r"(0\.0\.0\.0|255\.255\.255\.255|2(2[4-9]|3[0-9])\.[0-9.]+)$",
    _MAPPED + r"(0{1,4}:0{1,4}|[fF]{4}:[fF]{4}|[eE][0-9a-fA-F]{3}:[0-9a-fA-F]{1,4})$",
)

_LABEL = re.compile(SERVICE_PATTERN)
_ID = re.compile(ID_PATTERN)
_META_KEY = re.compile(META_KEY_PATTERN)
_TAG = re.compile(TAG_PATTERN)
_PRIORITY = re.compile(PRIORITY_PATTERN)
_OWNER = re.compile(OWNER_PATTERN)
# Ids already found valid: every keepalive checks its lease id, and the regex would cost a
# tenth of the embedded backend's keepalive.
_CHECKED_IDS: set[str] = set()
MAX_CHECKED_IDS = 256  # a few busy leases; small, so that it keeps no memory to speak of


class InvalidField(ValueError):
    """A value that cannot be stored; names the field so clients can fix their request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def service_name(value: object, field: str = "service") -> str:
    """Return the canonical (lower-case) service name, or raise InvalidField."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if not _LABEL.fullmatch(value):
        raise InvalidField(
            field,
            f"{value!r} is not a DNS label: 1-63 characters of a-z, 0-9 and '-', "
            "not starting or ending with '-'",
        )
    return value.lower()


def identifier(value: object, field: str) -> str:
    """Return value if it is a safe id for keys, paths and URLs, or raise InvalidField."""
    if type(value) is str and value in _CHECKED_IDS:
        return value
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidField(
            field,
            f"{value!r} is not a valid id: 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':', '-', "
            "starting with a letter or digit",
        )
    if type(value) is str:
        if len(_CHECKED_IDS) >= MAX_CHECKED_IDS:
            _CHECKED_IDS.clear()
        _CHECKED_IDS.add(value)
    return value


def unusable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why clients cannot be sent to this address (None when they can).

    The unspecified address reaches the connecting host's own services (through the LB: the
    LB host's), the broadcast and multicast ones no single endpoint; an IPv4-mapped IPv6
    form (::ffff:0.0.0.0) reaches what its IPv4 address does.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "the unspecified address, which reaches whatever listens on the connecting host"
    if address == BROADCAST:
        return "the broadcast address"
    if address.is_multicast:
        return "a multicast address"
    return None


def ip_literal(value: object, field: str = "address") -> str:
    """Return the normalized IPv4/IPv6 literal of a reachable endpoint, or raise InvalidField."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidField(field, f"{value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise InvalidField(field, f"{value!r}: scoped IPv6 addresses are not supported")
    reason = unusable(address)
    if reason is not None:
        raise InvalidField(field, f"{value!r} is {reason}, not an instance's address")
    return str(address)


def bounded_int(value: object, field: str, low: int, high: int) -> int:
    """Return value if it is an integer in [low, high], or raise InvalidField."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(field, f"must be an integer between {low} and {high}")
    if not low <= value <= high:
        raise InvalidField(field, f"{value} is out of range {low}-{high}")
    return value


def ttl_seconds(value: object, field: str = "ttl") -> int:
    """Return a lease TTL in whole seconds, accepting integral floats, or raise InvalidField."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return bounded_int(value, field, MIN_TTL, MAX_TTL)


def owner_text(value: object, field: str = "owner") -> str:
    """Return a lease owner (printable ASCII, at most MAX_OWNER long), or raise InvalidField."""
    if not isinstance(value, str) or not _OWNER.fullmatch(value):
        raise InvalidField(field, f"must be at most {MAX_OWNER} printable ASCII characters")
    return value


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidField("tags", "must be a list of strings")
    tags = tuple(value)
    if len(tags) > MAX_TAGS:
        raise InvalidField("tags", f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise InvalidField("tags", f"each tag must be 1-{MAX_TAG_LENGTH} printable ASCII "
                                       f"characters without spaces; {tag!r} is not")
    return tuple(dict.fromkeys(tags))


def _meta(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidField("meta", "must be an object of string to string")
    if len(value) > MAX_META:
        raise InvalidField("meta", f"at most {MAX_META} keys")
    for key, item in value.items():
        if not isinstance(key, str) or not _META_KEY.fullmatch(key):
            raise InvalidField("meta", f"key {key!r} must be 1-{MAX_META_KEY} of A-Z a-z 0-9 _ -")
        if not isinstance(item, str) or len(item) > MAX_META_VALUE:
            raise InvalidField("meta", f"value of {key!r} must be a string of at most 512 chars")
    priority = value.get(PRIORITY_KEY)
    if priority is not None and not _PRIORITY.fullmatch(priority):
        raise InvalidField(f"meta.{PRIORITY_KEY}", f"{priority!r} is not an SRV priority: "
                                                   "an integer 0-65535 in ASCII digits")
    return dict(value)


def worst(states: Iterable[Health]) -> Health:
    """The worst of some health states (critical over warning over passing)."""
    rank = 0
    for state in states:
        rank = max(rank, HEALTH_STATES.index(state))
    return HEALTH_STATES[rank]


def _seconds(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(field, "must be a number of seconds")
    if not 0 <= value <= MAX_CHECK_SECONDS:
        raise InvalidField(field, f"must be 0-{MAX_CHECK_SECONDS:.0f} seconds")
    return float(value)


def _wall_clock(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise InvalidField(field, "must be a wall-clock time in seconds")
    return float(value)


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    if len(value) > limit:
        raise InvalidField(field, f"must be at most {limit} characters")
    return value


@dataclass(frozen=True, slots=True)
class Check:
    """One named health check of an instance, Consul-shaped: its status is part of the
    instance's health, so every consumer (DNS, LB, Consul API) sees what the check saw."""

    id: str
    name: str
    kind: CheckKind
    status: Health = "critical"
    output: str = ""
    changed: float = 0.0  # wall clock of the last status change
    target: str = ""  # what is probed: a URL, host:port, a command, "" for ttl/docker
    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0  # ttl checks: a report must come within this many seconds
    expires_at: float = 0.0  # ttl checks: wall clock after which no report means critical
    deregister_after: float = 0.0  # critical this long: the instance is removed (0: never)

    def __post_init__(self) -> None:
        identifier(self.id, "checks.id")
        _text(self.name, "checks.name", MAX_CHECK_TARGET)
        if self.kind not in CHECK_KINDS:
            raise InvalidField("checks.kind", f"must be one of {', '.join(CHECK_KINDS)}")
        if self.status not in HEALTH_STATES:
            raise InvalidField("checks.status", f"must be one of {', '.join(HEALTH_STATES)}")
        setattr_ = object.__setattr__
        # Consul truncates long output rather than refusing the update; so does pilotfish.
        setattr_(self, "output", _text(self.output, "checks.output", 1 << 20)[:MAX_CHECK_OUTPUT])
        _text(self.target, "checks.target", MAX_CHECK_TARGET)
        for name in ("interval", "timeout", "ttl", "deregister_after"):
            setattr_(self, name, _seconds(getattr(self, name), f"checks.{name}"))
        for name in ("changed", "expires_at"):
            setattr_(self, name, _wall_clock(getattr(self, name), f"checks.{name}"))

    def status_at(self, now: float) -> Health:
        """The status as of `now`: a ttl check whose report is overdue is critical."""
        if self.kind == "ttl" and self.expires_at and now > self.expires_at:
            return "critical"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by the API and stored by backends."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "status": self.status,
                "output": self.output, "changed": self.changed, "target": self.target,
                "interval": self.interval, "timeout": self.timeout, "ttl": self.ttl,
                "expires_at": self.expires_at, "deregister_after": self.deregister_after}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        """Rebuild (and revalidate) a check from its JSON form."""
        if not isinstance(data, Mapping):
            raise InvalidField("checks", "each check must be an object")
        known = {name: data[name] for name in CHECK_FIELDS if name in data}
        for name in ("id", "name", "kind"):
            if name not in known:
                raise InvalidField(f"checks.{name}", "is required")
        return cls(**known)


CHECK_FIELDS = ("id", "name", "kind", "status", "output", "changed", "target", "interval",
                "timeout", "ttl", "expires_at", "deregister_after")


def _checks(value: object) -> tuple[Check, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidField("checks", "must be a list of checks")
    checks = tuple(c if isinstance(c, Check) else Check.from_dict(c) for c in value)
    if len(checks) > MAX_CHECKS:
        raise InvalidField("checks", f"at most {MAX_CHECKS} checks per instance")
    ids = [c.id for c in checks]
    if len(set(ids)) != len(ids):
        raise InvalidField("checks.id", "check ids must be unique within an instance")
    return checks


@dataclass(frozen=True, slots=True)
class Instance:
    """One reachable endpoint of a service, attached to the lease that keeps it alive."""

    service: str
    id: str
    address: str
    port: int
    lease: str
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    health: Health = "passing"  # the container's own state (Docker health, kill/stop)
    checks: tuple[Check, ...] = ()

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "service", service_name(self.service))
        identifier(self.id, "id")
        setattr_(self, "address", ip_literal(self.address))
        bounded_int(self.port, "port", 1, 65535)
        identifier(self.lease, "lease")
        setattr_(self, "tags", _tags(self.tags))
        setattr_(self, "meta", _meta(self.meta))
        bounded_int(self.weight, "weight", 1, 65535)
        if self.health not in HEALTH_STATES:
            raise InvalidField("health", f"must be one of {', '.join(HEALTH_STATES)}")
        setattr_(self, "checks", _checks(self.checks))

    def overall_health(self, now: float | None = None) -> Health:
        """The worst of the instance's own health and its checks' statuses (as of `now`)."""
        if not self.checks:
            return self.health
        moment = time.time() if now is None else now
        return worst((self.health, *(c.status_at(moment) for c in self.checks)))

    @property
    def serving(self) -> bool:
        """Whether consumers (DNS, LB) should hand this instance out: anything but critical,
        as Consul's DNS does by default (only_passing = false)."""
        return self.overall_health() != "critical"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by the API and by backends that store documents."""
        return {
            "service": self.service,
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "tags": list(self.tags),
            "meta": dict(self.meta),
            "weight": self.weight,
            "health": self.health,
            "checks": [c.to_dict() for c in self.checks],
            "lease": self.lease,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Instance:
        """Rebuild (and revalidate) an instance from its JSON form."""
        return cls(
            service=data["service"],
            id=data["id"],
            address=data["address"],
            port=data["port"],
            lease=data["lease"],
            tags=tuple(data.get("tags", ())),
            meta=data.get("meta", {}),
            weight=data.get("weight", 1),
            health=data.get("health", "passing"),
            checks=data.get("checks", ()),
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """A TTL that keepalives renew; when it lapses or is revoked, its instances go."""

    id: str
    ttl: int
    owner: str = ""
    expires_at: float = 0.0  # wall-clock seconds, as of when this value was read

    def __post_init__(self) -> None:
        identifier(self.id, "lease")
        ttl_seconds(self.ttl)
        owner_text(self.owner)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by the API."""
        return {"id": self.id, "ttl": self.ttl, "owner": self.owner, "expires_at": self.expires_at}
