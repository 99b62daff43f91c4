"""The intentions a host enforces: read from the catalog's config entry every POLL seconds, so
a change applies to new connections within a second; the last ones read stay in force while
the backend cannot be read (fail static), and nothing is allowed before the first read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from pilotfish.catalog.interface import Catalog, CatalogError
from pilotfish.loop import cancel_and_wait
from pilotfish.mesh.intentions import ENTRY, Intentions, stored

log = logging.getLogger(__name__)

POLL = 0.25
FIRST_READ = 3.0


class IntentionsFollower:
    """Keeps `current` up to date with the stored intentions; calls subscribers on a change."""

    def __init__(self, catalog: Catalog, poll: float = POLL) -> None:
        self.catalog = catalog
        self.poll = poll
        self.current = Intentions((), "deny", -1)  # until the first read: nothing is allowed
        self.errors = 0
        self._subscribers: list[Callable[[Intentions], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._read = asyncio.Event()

    def subscribe(self, callback: Callable[[Intentions], None]) -> None:
        """Call `callback` with each new version."""
        self._subscribers.append(callback)

    def allows(self, source: str, destination: str) -> bool:
        """Whether the intentions in force let `source` connect to `destination`."""
        return self.current.allows(source, destination)

    async def start(self) -> None:
        """Begin following; wait briefly for the first read (never fail: retried)."""
        self._task = asyncio.create_task(self._follow(), name="mesh-intentions")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._read.wait(), FIRST_READ)

    async def stop(self) -> None:
        """Stop following."""
        await cancel_and_wait(self._task)

    async def _follow(self) -> None:
        failing = False
        while True:
            try:
                entry = await asyncio.wait_for(self.catalog.config_entry(ENTRY), 5.0)
            except (CatalogError, TimeoutError, OSError) as exc:
                self.errors += 1
                if not failing:
                    log.warning("mesh: intentions cannot be read (%s); the last ones read stay "
                                "in force", str(exc)[:200])
                failing = True
            else:
                if failing:
                    log.info("mesh: intentions readable again")
                failing = False
                if entry.version != self.current.version:
                    self.current = stored(entry.value, entry.version)
                    log.info("mesh: intentions at version %d: %d rule(s), default %s",
                             entry.version, len(self.current.rules), self.current.default)
                    for callback in self._subscribers:
                        callback(self.current)
                self._read.set()
            await asyncio.sleep(self.poll)
