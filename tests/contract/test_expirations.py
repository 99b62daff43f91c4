"""Every backend counts the leases it sees lapse (pilotfish_lease_expirations_total)."""

from __future__ import annotations

import pytest

from pilotfish.catalog import Catalog, Instance
from tests.fixtures.watching import eventually, wait_until

TTL = 2


@pytest.mark.slow
async def test_a_lapsed_lease_is_counted(catalog: Catalog, unique: str) -> None:
    before = catalog.expirations
    lease = await catalog.create_lease(TTL, owner="contract")
    await catalog.register(Instance(service=f"lapse-{unique}", id=f"l-{unique}",
                                    address="127.0.0.1", port=8080, lease=lease.id))
    await wait_until(catalog, lambda s: s.get(f"l-{unique}"), 5)
    await wait_until(catalog, lambda s: s.get(f"l-{unique}") is None, TTL + 3)
    # Consul and ZooKeeper count when their reaper deletes the lease: within a few seconds.
    await eventually(lambda: catalog.expirations > before, 5,
                     f"the lapsed lease counted in expirations (was {before})")
