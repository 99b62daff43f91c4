"""Outage and lapse bookkeeping: a lease that ran out while etcd could not be reached."""

from __future__ import annotations

import asyncio
import time

from pilotfish.catalog.backends.etcd.calls import EtcdCalls
from pilotfish.catalog.backends.etcd.members import REVOKE_LAPSED_AFTER, _Held, _lease_number, log
from pilotfish.catalog.interface import BackendUnavailable


class EtcdOutages(EtcdCalls):
    """When etcd was unreachable, and which of our leases ran out meanwhile (then revoked)."""

    async def healthy(self) -> bool:
        """Healthy while the watch is connected (or only briefly reconnecting)."""
        return self._synced.is_set() and self._down_for() <= self._stale_grace

    # availability and outages

    def _down_for(self) -> float:
        if self._disconnected_at is None:
            return 0.0
        return time.monotonic() - self._disconnected_at

    def _went_down(self) -> None:
        if self._disconnected_at is not None:
            return
        self._disconnected_at = time.monotonic()
        log.warning("etcd watch lost (%s); reconnecting", self._watch_error)
        # Wake blocked watchers once the grace is over, so they report the outage.
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self._stale_grace + 0.01, self.changes.notify)

    def _came_up(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        was_down, self._disconnected_at = self._disconnected_at, None
        first = not self._synced.is_set()
        self._synced.set()
        if was_down is None or first:
            return
        now = time.monotonic()
        if now - was_down > self._stale_grace:
            self._outages.append((was_down, now))
            log.info("etcd reachable again after %.1fs", now - was_down)
            for lease_id, held in list(self._held.items()):
                if self._lapsed_in_outage(held):
                    self._mark_lapsed(lease_id)
        self._snapshots.changed()

    def _lapsed_in_outage(self, held: _Held) -> bool:
        """Whether the lease ran out (by our clock) while etcd could not be reached."""
        if held.expires > time.monotonic():
            return False
        down = self._disconnected_at
        if down is not None and time.monotonic() - down > self._stale_grace:
            if held.expires >= down:
                return True
        return any(start <= held.expires <= end for start, end in self._outages)

    def _mark_lapsed(self, lease_id: str) -> None:
        """Refuse keepalives on a lease that ran out during an outage, and revoke what etcd
        kept. Readers drop its instances by their published expiry (after the recovery
        grace, see Freshness) unless the registrar, told UnknownLease, registers them again
        on a new lease first; the revoke waits for that, so it never deletes them under a
        live registrar."""
        self._held.pop(lease_id, None)
        if lease_id in self._lapsed:
            return
        log.info("lease %s ran out (by this process's clock) while etcd could not be reached "
                 "or took no writes; revoking what etcd kept", lease_id)
        self._lapsed.add(lease_id)
        number = _lease_number(lease_id)
        if number is not None:
            self._spawn(self._revoke_lapsed(lease_id, number))

    async def _revoke_lapsed(self, lease_id: str, number: int) -> None:
        await asyncio.sleep(REVOKE_LAPSED_AFTER)
        for _ in range(60):
            try:
                await self._revoke_number(number)
                return
            except BackendUnavailable:
                await asyncio.sleep(1.0)
        log.warning("could not revoke lapsed lease %s; etcd will expire it", lease_id)
