"""One log line per change in what the sidecar registers, as Registrator logs them: `added:`,
`removed:`, and `critical:` / `warning:` / `passing:` when an instance's health changes, each
with the reason (the failing check's output, or why the container went)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from pilotfish.catalog.checks import TTL_EXPIRED
from pilotfish.catalog.model import Health, Instance

log = logging.getLogger("pilotfish.sidecar")
MAX_REASON = 300  # characters of a check's output quoted in a line


def reason(instance: Instance, now: float | None = None) -> str:
    """Why the instance has its health: the worst check's name and output, or its own."""
    moment = time.time() if now is None else now
    health = instance.overall_health(moment)
    if health == "passing":
        return "all checks passing" if instance.checks else "container running"
    for check in instance.checks:
        if check.status_at(moment) == health:
            said = check.output if check.status == health else TTL_EXPIRED
            return f"{check.id}: {(said or 'no result yet')[:MAX_REASON]}"
    return f"container {health}"


class Journal:
    """Remembers each registered instance's health, and logs what changed."""

    def __init__(self) -> None:
        self._health: dict[str, Health] = {}

    def update(self, instances: Iterable[Instance], gone: Mapping[str, str]) -> None:
        """Log the instances added, removed (with `gone[id]` as the reason) and changed."""
        now = time.time()
        seen: dict[str, Health] = {}
        for instance in instances:
            health = seen[instance.id] = instance.overall_health(now)
            before = self._health.get(instance.id)
            if before is None:
                log.info("added: %s %s %s:%d (%s: %s)", instance.id, instance.service,
                         instance.address, instance.port, health, reason(instance, now))
            elif before != health:
                log.info("%s: %s %s (%s)", health, instance.id, instance.service,
                         reason(instance, now))
        for instance_id in self._health.keys() - seen.keys():
            log.info("removed: %s (%s)", instance_id, gone.get(instance_id, "no longer wanted"))
        self._health = seen
