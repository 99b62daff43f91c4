"""The intentions API (/v1/intentions): read them (scope `read`), change them (scope `admin`).

Every change is a check-and-set on the config entry, retried when another writer got there
first, so two admins adding rules at once both keep theirs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr

from pilotfish.catalog.entries import MAX_VERSION
from pilotfish.catalog.interface import BackendUnavailable, Catalog, EntryConflict
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import json_response
from pilotfish.mesh.intentions import (
    DESCRIPTION_PATTERN,
    ENTRY,
    MAX_INTENTIONS,
    NAME_PATTERN,
    Intention,
    Intentions,
    stored,
)
from pilotfish.registry.bodies import _whole as whole
from pilotfish.registry.bodies import parse_body
from pilotfish.registry.calls import bounded
from pilotfish.registry.entries import conflict, require_admin

ATTEMPTS = 16
WHOLE_BODY = 1 << 20  # PUT /v1/intentions: a thousand rules fit, whatever --max-body says
BACKOFF = 0.005  # seconds, times the attempt, at most: writers that collided spread out
NamePath = Annotated[str, Path(pattern=f"^(?:{NAME_PATTERN})$",
                               description="a service, a prefix ending in '*', or '*'")]


DESCRIPTION = f"^{DESCRIPTION_PATTERN}$"


class RuleBody(BaseModel):
    """PUT /v1/intentions/{source}/{destination}."""

    model_config = ConfigDict(extra="forbid")
    action: Literal["allow", "deny"]
    description: StrictStr = Field(default="", pattern=DESCRIPTION)


class RuleOut(BaseModel):
    """One intention."""

    model_config = ConfigDict(extra="forbid")
    source: StrictStr = Field(pattern=f"^(?:{NAME_PATTERN})$")
    destination: StrictStr = Field(pattern=f"^(?:{NAME_PATTERN})$")
    action: Literal["allow", "deny"]
    description: StrictStr = Field(default="", pattern=DESCRIPTION)


class IntentionsBody(BaseModel):
    """PUT /v1/intentions: every rule and the default, replacing what is stored at `version`
    (leave it out to replace whatever is there)."""

    model_config = ConfigDict(extra="forbid")
    default: Literal["allow", "deny"]
    intentions: list[RuleOut] = Field(max_length=MAX_INTENTIONS)
    version: Annotated[int, Field(ge=0, le=MAX_VERSION, strict=True),
                       BeforeValidator(whole)] | None = None


class IntentionsOut(BaseModel):
    """Every rule, the default, and the version they are at."""

    default: Literal["allow", "deny"]
    intentions: list[RuleOut]
    version: int


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A request body's OpenAPI entry with its nested models written in place (a `$defs`
    reference inside a requestBody resolves against nothing)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    content = {"application/json": {"schema": inline(schema)}}
    return {"requestBody": {"required": True, "content": content}}


class IntentionHandlers:
    """Reads and check-and-set changes of the intentions entry."""

    def __init__(self, catalog: Catalog, max_body: int) -> None:
        self.catalog = catalog
        self.max_body = max_body

    async def current(self) -> Intentions:
        """The intentions as stored now."""
        entry = await bounded(self.catalog.config_entry(ENTRY))
        return stored(entry.value, entry.version)

    async def list_intentions(self) -> Response:
        return json_response((await self.current()).to_dict())

    async def replace_intentions(self, request: Request) -> Response:
        require_admin(request, "changing intentions")
        body = await parse_body(request, IntentionsBody, max(self.max_body, WHOLE_BODY))
        rules = {(r.source, r.destination): r.model_dump() for r in body.intentions}
        new = Intentions.from_value({"default": body.default,  # the last rule of a pair wins
                                     "intentions": list(rules.values())})
        version = body.version
        if version is None:
            version = (await bounded(self.catalog.config_entry(ENTRY))).version
        try:
            entry = await bounded(self.catalog.put_config_entry(ENTRY, new.to_value(), version))
        except EntryConflict as exc:
            raise conflict(exc) from None
        return json_response(stored(entry.value, entry.version).to_dict())

    async def put_rule(self, source: NamePath, destination: NamePath,
                       request: Request) -> Response:
        require_admin(request, "changing intentions")
        body = await parse_body(request, RuleBody, self.max_body)
        rule = Intention(source, destination, body.action, body.description)
        created = False

        def change(current: Intentions) -> Intentions:
            nonlocal created
            created = current.get(*rule.key) is None
            return current.put(rule)

        await self._change(change)
        return json_response(rule.to_dict(), 201 if created else 200)

    async def delete_rule(self, source: NamePath, destination: NamePath,
                          request: Request) -> Response:
        require_admin(request, "changing intentions")
        key = (source.lower(), destination.lower())

        def change(current: Intentions) -> Intentions:
            if current.get(*key) is None:
                raise ApiError(404, "not_found", f"no intention {key[0]} -> {key[1]}")
            return current.without(*key)

        await self._change(change)
        return Response(status_code=204)

    async def _change(self, change: Callable[[Intentions], Intentions]) -> Intentions:
        """Read, change, write with check-and-set; again when another writer got there first."""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, BACKOFF * attempt))
            entry = await bounded(self.catalog.config_entry(ENTRY))
            updated = change(stored(entry.value, entry.version))
            try:
                written = await bounded(self.catalog.put_config_entry(
                    ENTRY, updated.to_value(), entry.version))
            except EntryConflict:
                continue
            return stored(written.value, written.version)
        raise BackendUnavailable("intentions kept changing under concurrent writers")
