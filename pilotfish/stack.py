"""What the components of one pilotfish process share, and the shape every component takes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pilotfish.catalog.interface import Catalog
from pilotfish.catalog.view import CatalogView
from pilotfish.http.acl import AccessPolicy
from pilotfish.metrics import Metrics


class Component(Protocol):
    """Anything a pilotfish process starts and stops: the API, DNS, LB listeners, the sidecar."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ComponentOptions(Protocol):
    """A component's command-line face: its flags, and what it builds from them.

    Each component package has one (a module with these two functions), so cli.py never
    probes another component's flags.
    """

    def add_flags(self, parser: argparse.ArgumentParser) -> None: ...

    def build(self, args: argparse.Namespace, stack: Stack) -> list[Component]: ...


class Stack:
    """One catalog, one local view of it and one metrics registry for every component."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.metrics = Metrics()
        # The registry API's ACL when this process runs one: /metrics ports without an ACL
        # of their own show per-instance series only to the callers it lets read.
        self.read_access: AccessPolicy | None = None
        # What each component says about itself for the status UI (pilotfish.ui.reports):
        # "lb", "sidecar", "dns" -> a function returning its report, called per render.
        self.reports: dict[str, Callable[[], Mapping[str, Any]]] = {}
        self._view: CatalogView | None = None
        # --workers: with more than one, DNS and the LB serve in worker processes, run by
        # `supervisor` (a pilotfish.workers.supervisor.Supervisor, made by the first
        # component that needs it: pilotfish.workers.options.supervisor).
        self.workers = 1
        self.supervisor: Component | None = None
        self._on_sighup: list[Callable[[], object]] = []

    def view(self, warm: bool = True) -> CatalogView:
        """The process's one CatalogView (made on first use): DNS and the LB both read it.

        `warm`: the asker serves nothing useful without the first snapshot (DNS, the LB), so
        the process waits for it at start; a page that can say "stale" does not hold up the
        start (the registry API must answer 503 at once while its backend is down).
        """
        if self._view is None:
            self._view = CatalogView(self.catalog)
            self._view.start_waits = warm
        else:
            self._view.start_waits = self._view.start_waits or warm
        return self._view

    @property
    def has_view(self) -> bool:
        """Whether any component asked for the view (so it must be started first)."""
        return self._view is not None

    def on_sighup(self, callback: Callable[[], object]) -> None:
        """Call `callback` on SIGHUP (the LB's routes file, an ACL file): one handler for the
        process runs every component's, where each installing its own would replace the last."""
        self._on_sighup.append(callback)

    def sighup(self) -> None:
        """What SIGHUP does: every registered callback, in registration order."""
        for callback in self._on_sighup:
            callback()
