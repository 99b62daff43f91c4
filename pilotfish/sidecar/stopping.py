"""Withdraw before death: a container Docker is stopping, or whose HEALTHCHECK just went
unhealthy, is marked critical at that event, so DNS and the LB send it no new work while it
drains; its `die` then removes it as before.

A `kill` event is a stop when its signal is one that ends a process (TERM, KILL, INT, QUIT, or
the container's own StopSignal); `docker kill -s HUP` (a reload) marks nothing. A container
still running its grace period (StopTimeout, default 10 s) plus GRACE_MARGIN after the kill
survived the signal: the mark is lifted (logged). `start` and `restart` lift it too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pilotfish.catalog.checks import with_check
from pilotfish.catalog.model import Check, Instance

log = logging.getLogger("pilotfish.sidecar")

DOCKER_CHECK = "docker"
ENDING = {"2", "3", "9", "15"}  # INT, QUIT, KILL, TERM, as stop_signal() numbers them
DEFAULT_STOP_TIMEOUT = 10.0
GRACE_MARGIN = 5.0
UNHEALTHY = "Docker HEALTHCHECK: unhealthy"


def stop_signal(value: object) -> str:
    """A signal as Docker names it in events ("15") or config ("SIGTERM"), normalised."""
    text = str(value or "").strip().upper()
    return {"SIGTERM": "15", "TERM": "15", "SIGKILL": "9", "KILL": "9", "SIGINT": "2",
            "INT": "2", "SIGQUIT": "3", "QUIT": "3"}.get(text, text.removeprefix("SIG"))


def marked(instance: Instance, why: str, since: float) -> Instance:
    """The instance critical, with a `docker` check saying why."""
    check = Check(id=DOCKER_CHECK, name="container state", kind="docker", status="critical",
                  output=why, changed=since)
    return replace(with_check(instance, check), health="critical")


class Marks:
    """The containers marked critical before Docker says they died, with why and since when."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._marks: dict[str, tuple[str, float]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def apply(self, container_id: str, instance: Instance) -> Instance:
        """The instance as it is to be registered: marked if its container is."""
        mark = self._marks.get(container_id)
        return instance if mark is None else marked(instance, *mark)

    def killed(self, container_id: str, details: Mapping[str, Any],
               attributes: Mapping[str, Any]) -> None:
        """A `kill` event: mark the container if the signal is one that stops it."""
        config = details.get("Config") or {}
        sent = stop_signal(attributes.get("signal"))
        if sent not in ENDING and sent != stop_signal(config.get("StopSignal")):
            return
        self._mark(container_id, f"container stopping (signal {sent}): withdrawn while it "
                                 "drains")
        grace = config.get("StopTimeout")
        grace = float(grace) if isinstance(grace, int | float) and grace >= 0 else \
            DEFAULT_STOP_TIMEOUT
        self._cancel(container_id)
        self._timers[container_id] = asyncio.get_running_loop().call_later(
            grace + GRACE_MARGIN, self._survived, container_id)

    def health(self, container_id: str, status: str) -> None:
        """A `health_status` event: unhealthy marks at once; healthy lifts that mark."""
        if status == "unhealthy":
            self._mark(container_id, UNHEALTHY)
        elif status == "healthy" and self._marks.get(container_id, ("",))[0] == UNHEALTHY:
            self.unmark(container_id)

    def _mark(self, container_id: str, why: str) -> None:
        if self._marks.get(container_id, ("",))[0] == why:
            return
        self._marks[container_id] = (why, time.time())
        self._changed()

    def _survived(self, container_id: str) -> None:
        self._timers.pop(container_id, None)
        if container_id in self._marks:
            log.info("passing: container %s still runs after its stop signal and grace "
                     "period; no longer withdrawn", container_id[:12])
            self.unmark(container_id)

    def _cancel(self, container_id: str) -> None:
        timer = self._timers.pop(container_id, None)
        if timer is not None:
            timer.cancel()

    def unmark(self, container_id: str, quiet: bool = False) -> None:
        """Lift a container's mark (it started again, or it is gone: `quiet`, no update)."""
        self._cancel(container_id)
        if self._marks.pop(container_id, None) is not None and not quiet:
            self._changed()

    def keep(self, running: Mapping[str, Mapping[str, Any]]) -> None:
        """After a reconcile (container id -> its inspect): forget the marks of containers no
        longer running, and an unhealthy mark Docker no longer reports (its `healthy` event
        came while the event stream was down)."""
        for container_id, (why, _) in list(self._marks.items()):
            health = ((running.get(container_id) or {}).get("State") or {}).get("Health") or {}
            if container_id not in running or (why == UNHEALTHY
                                               and health.get("Status") != "unhealthy"):
                self.unmark(container_id, quiet=True)

    def clear(self) -> None:
        """Forget every mark and timer."""
        for container_id in list(self._marks):
            self.unmark(container_id, quiet=True)
