"""What the registry API reads and writes: request bodies and answers (pydantic, for checking
and for the OpenAPI document), path and query parameters, and their parsing."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from pilotfish.catalog.model import (
    ID_PATTERN,
    MAX_CHECK_OUTPUT,
    MAX_CHECK_SECONDS,
    MAX_CHECK_TARGET,
    MAX_CHECKS,
    MAX_META,
    MAX_META_VALUE,
    MAX_TAGS,
    MAX_TTL,
    META_KEY_PATTERN,
    MIN_TTL,
    OWNER_PATTERN,
    PRIORITY_KEY,
    PRIORITY_PATTERN,
    SERVICE_PATTERN,
    TAG_PATTERN,
    UNUSABLE_ADDRESS_PATTERNS,
    Check,
    InvalidField,
    ip_literal,
)
from pilotfish.http.errors import CODES, ApiError, body_too_large

B = TypeVar("B", bound=BaseModel)

MAX_WAIT = 600.0
DEFAULT_WAIT = 300.0
DEFAULT_MAX_BODY = 64 * 1024
OWN_LEASE_PREFIX = "instance:"  # the owner of the lease an instance registered with a ttl gets
WAIT_PATTERN = r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m)?"
_DURATION = re.compile(WAIT_PATTERN)
_INDEX = re.compile(r"[0-9]{1,19}")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def _anchored(pattern: str) -> str:
    """A JSON-Schema pattern (searched, ECMA `$`) that matches only the whole value."""
    return f"^{pattern}$"


def _no_default(schema: dict[str, Any]) -> None:
    """Drop a placeholder default from the published schema: absent means absent."""
    schema.pop("default", None)


def _whole(value: object) -> object:
    """JSON Schema counts 80.0 as an integer; so do we."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


ID = _anchored(ID_PATTERN)
Whole = Annotated[StrictInt, BeforeValidator(_whole)]
Ttl = Annotated[StrictFloat, Field(ge=MIN_TTL, le=MAX_TTL, multiple_of=1,
                                   description="seconds, a whole number")]


def _address(value: str) -> str:
    """An instance address as the model checks it: refused here, it is a 422 naming it."""
    try:
        return ip_literal(value)
    except InvalidField as exc:
        raise PydanticCustomError("address", exc.message) from None


class LeaseBody(BaseModel):
    """POST /v1/leases."""

    model_config = ConfigDict(extra="forbid")
    ttl: Ttl
    owner: StrictStr = Field(default="", pattern=_anchored(OWNER_PATTERN))


Seconds = Annotated[StrictFloat, Field(ge=0, le=MAX_CHECK_SECONDS, allow_inf_nan=False)]
WallClock = Annotated[StrictFloat, Field(ge=0, le=1e11, allow_inf_nan=False,
                                         description="wall-clock seconds since the epoch")]
CheckStatus = Literal["passing", "warning", "critical"]
CheckKindName = Literal["http", "https", "tcp", "script", "ttl", "docker", "sidecar"]


class CheckBody(BaseModel):
    """One health check of an instance (Consul-shaped): what is probed, and its last result."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr = Field(pattern=ID, description="unique within the instance")
    name: StrictStr = Field(default="", max_length=MAX_CHECK_TARGET,
                            description="shown to people; the id when empty")
    kind: CheckKindName
    status: CheckStatus = "critical"
    output: StrictStr = Field(default="", max_length=MAX_CHECK_OUTPUT)
    changed: WallClock = 0.0
    target: StrictStr = Field(default="", max_length=MAX_CHECK_TARGET,
                              description="what is probed: a URL, host:port, a command")
    interval: Seconds = 0.0
    timeout: Seconds = 0.0
    ttl: Seconds = Field(default=0.0, description="ttl checks: report within this many seconds")
    expires_at: WallClock = 0.0
    deregister_after: Seconds = Field(
        default=0.0, description="critical this long: the instance is deregistered (0: never)")


class CheckOut(BaseModel):
    """A check as the API shows it."""

    id: str
    name: str
    kind: CheckKindName
    status: CheckStatus
    output: str
    changed: float
    target: str
    interval: float
    timeout: float
    ttl: float
    expires_at: float
    deregister_after: float


class InstanceBody(BaseModel):
    """PUT /v1/services/{service}/instances/{id}: the lease, or a ttl for a lease of its own."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["lease"]}, {"required": ["ttl"]}]})
    address: Annotated[StrictStr, AfterValidator(_address)] = Field(
        description="an IPv4 or IPv6 literal clients can connect to: not unspecified, "
                    "broadcast or multicast (nor their IPv4-mapped forms)",
        json_schema_extra={
            "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
            "not": {"anyOf": [{"pattern": p} for p in UNUSABLE_ADDRESS_PATTERNS]}})
    port: Whole = Field(ge=1, le=65535)
    tags: list[Annotated[StrictStr, Field(pattern=_anchored(TAG_PATTERN))]] = Field(
        default_factory=list, max_length=MAX_TAGS)
    meta: dict[Annotated[StrictStr, Field(pattern=_anchored(META_KEY_PATTERN))],
               Annotated[StrictStr, Field(max_length=MAX_META_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_META, json_schema_extra={
            "additionalProperties": False, "properties": {
            PRIORITY_KEY: {"type": "string", "pattern": _anchored(PRIORITY_PATTERN),
                           "description": "SRV priority in DNS (default 1)"}}})
    weight: Whole = Field(default=1, ge=1, le=65535)
    health: Literal["passing", "warning", "critical"] = "passing"
    checks: list[CheckBody] = Field(default_factory=list, max_length=MAX_CHECKS,
                                    description="ids unique within the instance")
    lease: StrictStr = Field(default="", pattern=ID, json_schema_extra=_no_default)
    ttl: Ttl = Field(default=0.0, json_schema_extra=_no_default)


def checks_of(bodies: list[CheckBody]) -> tuple[Check, ...]:
    """The checks of a request body: a repeated id replaces the earlier one (as Consul's agent
    does), and a check without a name is named by its id."""
    by_id: dict[str, Check] = {}
    for body in bodies:
        fields = body.model_dump()
        fields["name"] = fields["name"] or body.id
        by_id.pop(body.id, None)
        by_id[body.id] = Check(**fields)
    return tuple(by_id.values())


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    code: str = Field(json_schema_extra={"enum": list(CODES)},
                      description="one of the codes of every pilotfish HTTP surface")
    field: str | None = Field(default=None, json_schema_extra=_no_default)
    token: str | None = Field(default=None, json_schema_extra=_no_default,
                              description="403: the name of the token refused")
    scope: str | None = Field(default=None, json_schema_extra=_no_default,
                              description="403: the scope the token lacks")


class LeaseOut(BaseModel):
    """A lease as the API shows it."""

    id: str
    ttl: int
    owner: str
    expires_at: float


class InstanceOut(BaseModel):
    """An instance as the API shows it."""

    service: str
    id: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    weight: int
    health: Literal["passing", "warning", "critical"]
    checks: list[CheckOut] = Field(default_factory=list)
    lease: str


class InstancesOut(BaseModel):
    """GET /v1/services/{service} and /v1/catalog."""

    index: int
    instances: list[InstanceOut]


class ServicesOut(BaseModel):
    """GET /v1/services."""

    index: int
    services: dict[str, int]


class HealthOut(BaseModel):
    """GET /v1/health."""

    status: Literal["ok", "unavailable"]
    backend_healthy: bool


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


async def parse_body(request: Request, model: type[B], limit: int = DEFAULT_MAX_BODY) -> B:
    """Parse a JSON body whatever its Content-Type (curl -d sends form encoding)."""
    raw = await read_body(request, limit)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its local `#/$defs/...` references replaced by what they name."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    return node


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a handler that parses its body itself (parse_body): its
    nested models inlined, since `$defs` would not resolve from the document's root."""
    raw = model.model_json_schema()
    schema = {"content": {"application/json": {"schema": _inlined(raw, raw.get("$defs", {}))}}}
    return {"requestBody": {"required": True, **schema}}


def parse_wait(value: str | None) -> float:
    """Parse a Consul-style duration ("30s", "500ms", "5m", "10"), capped at 10 minutes."""
    if value is None:
        return DEFAULT_WAIT
    match = _DURATION.fullmatch(value)
    if not match:
        raise ApiError(400, "invalid", f"wait: {value!r} is not a duration like 30s", "wait")
    return min(float(match.group(1)) * _UNITS[match.group(2)], MAX_WAIT)


def own_lease_owner(instance_id: str) -> str:
    """The owner of the lease the API makes for an instance registered with a ttl."""
    return f"{OWN_LEASE_PREFIX}{instance_id}"


def parse_index(value: object) -> object:
    """A catalog index in plain ASCII digits; anything else is left for the int check to refuse."""
    if isinstance(value, str) and not _INDEX.fullmatch(value):
        raise ValueError("must be a whole number in ASCII digits")
    return value


ServicePath = Annotated[str, Path(pattern=_anchored(SERVICE_PATTERN),
                                  description="a DNS label, matched case-insensitively")]
InstancePath = Annotated[str, Path(pattern=ID)]
LeasePath = Annotated[str, Path(pattern=ID)]
IndexQuery = Annotated[int | None, BeforeValidator(parse_index), WithJsonSchema(
    {"type": "integer", "minimum": 0, "maximum": 10**19 - 1}), Query(
    description="block until the answer moves past this X-Pilotfish-Index")]
WaitQuery = Annotated[str | None, WithJsonSchema(  # parse_wait checks it: 400 naming `wait`
    {"type": "string", "pattern": _anchored(WAIT_PATTERN)}), Query(
    description="at most this long: 30s, 500ms, 5m (cap 10m)")]

