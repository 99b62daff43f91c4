"""What the pages show, gathered from one process: its catalog view, lease details, the
components' reports, and DNS rates measured between renders."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pilotfish.catalog.interface import Catalog, ChangeSignal, Snapshot
from pilotfish.catalog.model import Lease
from pilotfish.catalog.view import CatalogView
from pilotfish.stack import Stack
from pilotfish.ui.reports import DnsReport, LbReport, SidecarReport

LEASE_FRESH = 1.0  # seconds a lease read is reused (TTL left is shown to the second)
LEASE_TIMEOUT = 1.0  # a render waits at most this long for lease reads
MAX_LEASES = 64  # distinct leases read for one service page; beyond, shown without details
LEASE_CONCURRENCY = 16
LEASE_RETRY = 5.0  # seconds before a lease that could not be read is tried again
RATE_WINDOW = 10.0  # seconds of DNS samples a rate is measured over


class DnsRates:
    """Responses per second by rcode, from cumulative counters sampled at each render."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque()

    def rates(self, answers: Mapping[str, int], now: float) -> dict[str, float] | None:
        """Per-rcode rates over the last RATE_WINDOW seconds (None until two samples)."""
        samples = self._samples
        if not samples or now - samples[-1][0] >= 0.5:
            samples.append((now, dict(answers)))
        while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW:
            samples.popleft()
        first_at, first = samples[0]
        elapsed = now - first_at
        if elapsed < 0.5:
            return None
        return {rcode: max(0, count - first.get(rcode, 0)) / elapsed
                for rcode, count in answers.items()}


class Board:
    """The process's facts for the pages; one per UI mount, shared by every page and feed."""

    def __init__(self, stack: Stack, view: CatalogView | None) -> None:
        self.stack = stack
        self._view = view
        self.changes = ChangeSignal()  # notified when the view publishes a snapshot
        self.dns_rates = DnsRates()
        self._subscribed = False
        self._leases: dict[str, tuple[float, Lease | None]] = {}
        self._unreadable: dict[str, float] = {}  # lease id -> when a read last failed
        self._lease_reads = asyncio.Semaphore(LEASE_CONCURRENCY)

    @property
    def view(self) -> CatalogView | None:
        """The process's view: the one this mount was given, else one a component made."""
        if self._view is None and self.stack.has_view:
            self._view = self.stack.view(warm=False)
        if self._view is not None and not self._subscribed:
            self._subscribed = True
            self._view.subscribe(lambda _: self.changes.notify())
        return self._view

    @property
    def catalog(self) -> Catalog:
        """The process's catalog (for lease details)."""
        return self.stack.catalog

    def snapshot(self) -> Snapshot | None:
        """The view's latest snapshot, None where this process keeps no view."""
        view = self.view
        return view.snapshot if view is not None else None

    def lb(self) -> LbReport | None:
        """The load balancer's report, if one runs here."""
        return cast(LbReport | None, self._report("lb"))

    def sidecar(self) -> SidecarReport | None:
        """The sidecar's report, if one runs here."""
        return cast(SidecarReport | None, self._report("sidecar"))

    def dns(self) -> DnsReport | None:
        """The DNS server's report, if one runs here."""
        return cast(DnsReport | None, self._report("dns"))

    def _report(self, name: str) -> Mapping[str, Any] | None:
        report = self.stack.reports.get(name)
        return report() if report is not None else None

    @property
    def domain(self) -> str:
        """The DNS domain names are shown in: this process's, else the default."""
        dns = self.dns()
        return dns["domain"] if dns is not None else "pilotfish"

    async def leases(self, lease_ids: Iterable[str]) -> dict[str, Lease | None]:
        """Lease details (owner, expiry) for up to MAX_LEASES ids, read at most once a second
        each and within LEASE_TIMEOUT; a lease not read in time is left out."""
        wanted = list(dict.fromkeys(lease_ids))[:MAX_LEASES]
        now = time.monotonic()
        stale = [i for i in wanted if now - self._leases.get(i, (-LEASE_FRESH, None))[0]
                 >= LEASE_FRESH and now - self._unreadable.get(i, -LEASE_RETRY) >= LEASE_RETRY]
        if stale:
            reads = [asyncio.ensure_future(self._read_lease(i)) for i in stale]
            _, pending = await asyncio.wait(reads, timeout=LEASE_TIMEOUT)
            for read in pending:
                read.cancel()
        if len(self._leases) + len(self._unreadable) > 8 * MAX_LEASES:
            # keep only what this page asked for: the caches stay small
            self._leases = {i: self._leases[i] for i in wanted if i in self._leases}
            self._unreadable = {}
        return {i: self._leases[i][1] for i in wanted if i in self._leases}

    async def _read_lease(self, lease_id: str) -> None:
        async with self._lease_reads:
            try:
                self._leases[lease_id] = (time.monotonic(), await self.catalog.lease(lease_id))
                self._unreadable.pop(lease_id, None)
            except Exception:  # e.g. an http:// catalog whose token may not read leases
                self._unreadable[lease_id] = time.monotonic()  # shown without details
