"""Config entries over HTTP (/v1/config/{name}): what an http:// catalog reads and writes
through this API; reading needs scope `read`, writing `admin`. The intentions' entry is
checked as intentions before it is stored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pilotfish.catalog.entries import ENTRY_NAME_PATTERN, MAX_VERSION
from pilotfish.catalog.interface import Catalog, EntryConflict
from pilotfish.http.acl import ADMIN, forbidden
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import json_response
from pilotfish.mesh import intentions
from pilotfish.registry.access import caller
from pilotfish.registry.bodies import Whole, parse_body
from pilotfish.registry.calls import bounded

EntryPath = Annotated[str, Path(pattern=f"^{ENTRY_NAME_PATTERN}$")]


class EntryBody(BaseModel):
    """PUT /v1/config/{name}: the whole document, and the version it replaces (0: none)."""

    model_config = ConfigDict(extra="forbid")
    value: dict[str, Any]
    version: Whole = Field(ge=0, le=MAX_VERSION)


class EntryOut(BaseModel):
    """A config entry: its document and version (0: never written)."""

    name: str
    value: dict[str, Any]
    version: int


def require_admin(request: Request, what: str) -> None:
    """The caller must hold scope admin (where the API has an ACL)."""
    token = caller(request)
    if token is not None and not token.admin:
        raise forbidden(token, ADMIN, what)


def conflict(exc: EntryConflict) -> ApiError:
    """409: the entry moved on since the version the write names."""
    return ApiError(409, "conflict", str(exc), "version")


class EntryHandlers:
    """GET and PUT of one config entry."""

    def __init__(self, catalog: Catalog, max_body: int) -> None:
        self.catalog = catalog
        self.max_body = max_body

    async def get_entry(self, name: EntryPath) -> Response:
        entry = await bounded(self.catalog.config_entry(name))
        return json_response(entry.to_dict())

    async def put_entry(self, name: EntryPath, request: Request) -> Response:
        require_admin(request, f"writing config entry {name!r}")
        body = await parse_body(request, EntryBody, self.max_body)
        if name == intentions.ENTRY:
            intentions.Intentions.from_value(body.value)  # InvalidField: 400 naming the rule
        try:
            entry = await bounded(self.catalog.put_config_entry(name, body.value, body.version))
        except EntryConflict as exc:
            raise conflict(exc) from None
        return json_response(entry.to_dict())
