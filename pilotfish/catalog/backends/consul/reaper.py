"""Tidying Consul: deleting lapsed lease records and deregistering their services."""

from __future__ import annotations

import asyncio
import time

from pilotfish.catalog.backends.consul.agent import LEASE_PREFIX, META_LEASE, REAP_PERIOD, log
from pilotfish.catalog.backends.consul.watch import ConsulWatch


class ConsulReaper(ConsulWatch):
    """Deletes lapsed leases (counting them) and the agent services left on them."""

    async def _deregister_leases(self, lease_ids: set[str]) -> None:
        """Remove every service on this agent that belongs to one of these leases."""
        services = await self._call(self._writer.agent.services())
        doomed = [sid for sid, svc in (services or {}).items()
                  if (svc.get("Meta") or {}).get(META_LEASE) in lease_ids]
        await asyncio.gather(*(self._call(self._writer.agent.service.deregister(sid))
                               for sid in doomed))
        for sid in doomed:
            self._registered.pop(sid, None)
        for sid, lease in list(self._registered.items()):
            if lease in lease_ids:
                del self._registered[sid]

    # -- clean-up ----------------------------------------------------------------

    async def _reap_loop(self) -> None:
        """Delete lapsed lease records and the dead services they leave on this agent.

        Consul's own DeregisterCriticalServiceAfter is the backstop when no pilotfish
        process is left; this just keeps Consul tidy sooner. Every process may do it:
        deletes are check-and-set, deregistrations idempotent.
        """
        while not self._closed:
            await asyncio.sleep(REAP_PERIOD)
            try:
                await self._reap()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("consul reap skipped: %s", exc)

    async def _reap(self) -> None:
        if self.freshness.stale:
            return  # renewals may be on their way: delete nothing we cannot see being renewed
        now = time.time()
        lapsed = [r for r in self._leases.values() if r.expires_at < now - 1.0]
        for record in lapsed:
            if record.version and await self._call(self._writer.kv.delete(
                    LEASE_PREFIX + record.id, cas=record.version)):
                self.expirations += 1
            self._forget_lease(record.id)
        dead = {lease for lease in self._registered.values()
                if (r := self._leases.get(lease)) is None or not r.live(now)}
        for entries in self._services.values():
            for entry in entries.values():
                if (entry.node == self._node and entry.instance.health == "critical"
                        and entry.instance.lease not in self._leases):
                    dead.add(entry.instance.lease)
        dead |= {r.id for r in lapsed}
        if dead:
            # A lease may merely not have reached our cache yet: ask KV before deleting.
            confirmed = set()
            for lease_id in dead:
                current = await self._read_lease(lease_id)
                if current is None or not current.live(time.time()):
                    confirmed.add(lease_id)
            if confirmed:
                await self._deregister_leases(confirmed)
