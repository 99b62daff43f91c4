"""A container's Docker state as the health its instances are registered with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pilotfish.catalog.model import Health


def container_health(state: Mapping[str, Any]) -> Health | None:
    """None when the container does not run (nothing to register); "critical" (registered,
    not served) while paused, while its health check is starting and when it is unhealthy;
    "passing" when healthy or running without a health check."""
    if not state.get("Running") or state.get("Restarting") or state.get("Dead"):
        return None
    if state.get("Paused"):
        return "critical"
    check = state.get("Health") or {}
    if check.get("Status") in ("starting", "unhealthy"):
        return "critical"
    return "passing"
