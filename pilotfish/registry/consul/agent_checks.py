"""The Consul agent's TTL check endpoints (PUT /v1/agent/check/pass|warn|fail/<id>, and
/update/<id> with {"Status", "Output"}), so apps written against Consul's TTL checks report to
pilotfish unchanged.

Consul's check ids are global per agent; pilotfish's are per instance. A Consul check id names
a pilotfish check in any of these forms, tried in this order:
- `<instance id>:<check id>` (or `pilotfish-check:<instance id>:<check id>`, the id the
  consul:// backend gives it in Consul);
- `service:<instance id>`: the instance's only ttl check (Consul's id for a service's one
  check), and `service:<instance id>:<n>`: its n-th check (1-based, as Consul numbers them);
- `<check id>` alone, when exactly one instance has a ttl check by that id.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from pilotfish.catalog.interface import BackendUnavailable, Catalog, UnknownLease
from pilotfish.catalog.model import MAX_CHECK_OUTPUT, Check, Health, Instance, InvalidField
from pilotfish.http.acl import Denied
from pilotfish.registry.calls import bounded
from pilotfish.registry.checks import VERDICTS, CheckReports
from pilotfish.registry.consul.dialect import ERROR_DOCS, ConsulError, consul_denied, plain_text

BACKEND_PREFIX = "pilotfish-check:"
STATUSES: tuple[Health, ...] = ("passing", "warning", "critical")
CheckIdPath = Annotated[str, Path(description="a Consul check id (see docs/consul-api.md)")]
NoteQuery = Annotated[str | None, Query(max_length=MAX_CHECK_OUTPUT,
                                        description="the check's output")]
UPDATE_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {
        "Status": {"type": "string", "enum": list(STATUSES)},
        "Output": {"type": "string", "maxLength": MAX_CHECK_OUTPUT}}}}}}}
DOCS = {**ERROR_DOCS, 200: {"description": "reported (an empty body, as Consul)"},
        404: {"description": "no such check (plain text)", "content": {"text/plain": {}}}}


def resolve(instances: dict[str, Instance], consul_id: str) -> tuple[Instance, Check]:
    """The instance and check a Consul check id names (ConsulError 404: none, or several)."""
    bare = consul_id.removeprefix(BACKEND_PREFIX)
    for n, char in enumerate(bare):
        if char == ":" and (instance := instances.get(bare[:n])) is not None:
            for check in instance.checks:
                if check.id == bare[n + 1:]:
                    return instance, check
    if consul_id.startswith("service:"):
        found = _by_service_id(instances, consul_id.removeprefix("service:"))
        if found is not None:
            return found
    matches = [(i, c) for i in instances.values() for c in i.checks
               if c.id == consul_id and c.kind == "ttl"]
    if len(matches) == 1:
        return matches[0]
    hint = (f" ({len(matches)} instances have a check by that id: name it "
            "<instance id>:<check id>)" if matches else "")
    raise ConsulError(404, f'Unknown check ID "{consul_id}". Ensure that the check ID is '
                           f"passed, not the check name.{hint}")


def _by_service_id(instances: dict[str, Instance], rest: str) -> tuple[Instance, Check] | None:
    instance = instances.get(rest)
    if instance is not None:
        ttl = [c for c in instance.checks if c.kind == "ttl"]
        return (instance, ttl[0]) if len(ttl) == 1 else None
    head, _, number = rest.rpartition(":")
    instance = instances.get(head)
    if instance is not None and number.isascii() and number.isdigit():
        n = int(number)
        if 1 <= n <= len(instance.checks):
            return instance, instance.checks[n - 1]
    return None


class AgentChecks:
    """The agent check routes over one catalog; reports go through CheckReports (the writer's
    token only, as on the REST check API)."""

    def __init__(self, catalog: Catalog, reports: CheckReports) -> None:
        self.catalog = catalog
        self.reports = reports

    async def _report(self, request: Request, consul_id: str, status: Health,
                      output: str) -> Response:
        try:
            snapshot = await bounded(self.catalog.snapshot())
            instance, check = resolve(dict(snapshot.instances), consul_id)
            await self.reports.apply(request, instance, check.id, status, output)
        except ConsulError as exc:
            return plain_text(exc.status, exc.message)
        except Denied as exc:
            return consul_denied(exc)
        except InvalidField as exc:  # not a ttl check
            return plain_text(400, f'CheckID "{consul_id}" does not have associated TTL: '
                                   f"{exc.message}")
        except UnknownLease:
            return plain_text(404, f'Unknown check ID "{consul_id}": its instance is gone')
        except BackendUnavailable as exc:
            return plain_text(500, f"rpc error: registry backend unavailable: {exc}")
        return plain_text(200, "")

    def verdict(self, verdict: str) -> Callable[..., Awaitable[Response]]:
        """The handler of /v1/agent/check/<verdict>/<id>."""
        status = VERDICTS[verdict]

        async def agent_check(check_id: CheckIdPath, request: Request,
                              note: NoteQuery = None) -> Response:
            return await self._report(request, check_id, status, note or "")

        agent_check.__doc__ = f"Consul: set a TTL check {status}, its output the note."
        return agent_check

    async def update(self, check_id: CheckIdPath, request: Request) -> Response:
        """Consul: set a TTL check's status and output ({"Status", "Output"})."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return plain_text(400, "Request decode failed: invalid JSON")
        if not isinstance(body, dict):
            return plain_text(400, "Request decode failed: not an object")
        status = body.get("Status", "passing") or "passing"
        output = body.get("Output", "")
        if status not in STATUSES:
            return plain_text(400, f'Invalid check status: "{status}"')
        if not isinstance(output, str) or len(output) > MAX_CHECK_OUTPUT:
            return plain_text(400, f"Output must be a string of at most {MAX_CHECK_OUTPUT} "
                                   "characters")
        return await self._report(request, check_id, status, output)

    def add_routes(self, router: APIRouter) -> None:
        """Put the agent check routes on the Consul router."""
        for verdict in VERDICTS:
            router.add_api_route(f"/v1/agent/check/{verdict}/{{check_id}}", self.verdict(verdict),
                                 methods=["PUT"], responses=DOCS, name=f"agent_check_{verdict}")
        router.add_api_route("/v1/agent/check/update/{check_id}", self.update, methods=["PUT"],
                             responses=DOCS, openapi_extra=UPDATE_BODY)
