"""The check API: apps and scripts report their ttl checks
(PUT /v1/services/{service}/instances/{id}/checks/{check_id}/pass|warn|fail), as the writer of
the instance (a write scope for its service, and its lease)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from pilotfish.catalog.checks import report
from pilotfish.catalog.interface import Catalog
from pilotfish.catalog.model import MAX_CHECK_OUTPUT, Health, Instance, service_name
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import json_response
from pilotfish.registry.access import AccessChecks
from pilotfish.registry.bodies import ID, InstancePath, ServicePath, parse_body
from pilotfish.registry.calls import bounded

VERDICTS: dict[str, Health] = {"pass": "passing", "warn": "warning", "fail": "critical"}
CheckPath = Annotated[str, Path(pattern=ID)]
NoteQuery = Annotated[str | None, Query(max_length=MAX_CHECK_OUTPUT,
                                        description="the check's output (or the body's note)")]


class ReportBody(BaseModel):
    """The optional body of a check report."""

    model_config = ConfigDict(extra="forbid")
    note: StrictStr = Field(default="", max_length=MAX_CHECK_OUTPUT,
                            description="the check's output")


def report_body_schema() -> dict[str, Any]:
    """The OpenAPI requestBody of a report: optional, a note."""
    schema = ReportBody.model_json_schema()
    return {"requestBody": {"required": False,
                            "content": {"application/json": {"schema": schema}}}}


class CheckReports:
    """Applies a report to one instance's ttl check and writes the instance (same id, same
    lease), so every consumer sees the new status through the catalog's watch."""

    def __init__(self, catalog: Catalog, access: AccessChecks) -> None:
        self.catalog = catalog
        self.access = access

    async def apply(self, request: Request, instance: Instance, check_id: str, status: Health,
                    note: str) -> Instance:
        """Check the caller may write the instance (scope and lease), then report. KeyError:
        the instance has no such check; InvalidField: it is not a ttl check."""
        self.access.require_write(request, instance.service)
        await self.access.require_lease(request, instance.lease)
        updated = report(instance, check_id, status, note[:MAX_CHECK_OUTPUT], time.time())
        await bounded(self.catalog.register(updated))
        return updated


class CheckHandlers:
    """The REST routes of the check API."""

    def __init__(self, catalog: Catalog, reports: CheckReports, max_body: int) -> None:
        self.catalog = catalog
        self.reports = reports
        self.max_body = max_body

    def handler(self, verdict: str) -> Any:
        """The handler of one verdict (pass, warn, fail)."""
        status = VERDICTS[verdict]

        async def report_check(service: ServicePath, instance_id: InstancePath,
                               check_id: CheckPath, request: Request,
                               note: NoteQuery = None) -> Response:
            self.reports.access.require_write(request, service_name(service))
            body = await parse_body(request, ReportBody, self.max_body)
            instance = (await bounded(self.catalog.snapshot())).get(instance_id)
            if instance is None or instance.service != service_name(service):
                raise ApiError(404, "not_found",
                               f"no instance {instance_id!r} in service {service!r}")
            try:
                updated = await self.reports.apply(request, instance, check_id, status,
                                                   body.note if note is None else note)
            except KeyError:
                raise ApiError(404, "not_found", f"instance {instance_id!r} has no check "
                                                 f"{check_id!r}") from None
            return json_response(updated.to_dict())

        report_check.__doc__ = f"Report a ttl check {status} (its output: the note)."
        return report_check


def add_check_routes(app: FastAPI, handlers: CheckHandlers, responses: dict[int | str, Any]
                     ) -> None:
    """/v1/services/{service}/instances/{instance_id}/checks/{check_id}/pass|warn|fail."""
    path = "/v1/services/{service}/instances/{instance_id}/checks/{check_id}/"
    for verdict in VERDICTS:
        app.router.add_api_route(path + verdict, handlers.handler(verdict), methods=["PUT"],
                                 openapi_extra=report_body_schema(), responses=responses,
                                 name=f"report_check_{verdict}")
