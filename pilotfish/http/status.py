"""/metrics and /health for any component's HTTP port, in front of whatever else it serves."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pilotfish.http.acl import AccessPolicy, reads_catalog
from pilotfish.http.errors import ApiError
from pilotfish.http.responses import respond
from pilotfish.metrics import Metrics

HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]
"""A component's health: (healthy, body), answered 200 with the body when healthy, else 503."""

ASGIApp = Callable[..., Any]


class StatusApp:
    """ASGI app answering GET /metrics (Prometheus text) and /health; the rest goes to `app`.

    `access`: the ACL whose readers see per-instance series on /metrics (acl.reads_catalog).
    """

    def __init__(self, metrics: Metrics, health: HealthProbe, app: ASGIApp | None = None,
                 access: AccessPolicy | None = None) -> None:
        self.metrics = metrics
        self.health = health
        self.app = app
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if self.app is not None:
                await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/metrics":
            include_instances = reads_catalog(scope, self.access)
            await respond(send, 200, (await self.metrics.scrape(include_instances)).encode(),
                          "text/plain; version=0.0.4")
        elif path == "/health":
            healthy, body = self.health()
            await respond(send, 200 if healthy else 503, json.dumps(body).encode())
        elif self.app is not None:
            await self.app(scope, receive, send)
        else:
            await ApiError(404, "not_found", "not found").send(send)
