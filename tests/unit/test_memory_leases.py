"""The embedded backend forgets revoked leases at once, not at their old deadline."""

from __future__ import annotations

import gc
import tracemalloc

from pilotfish.catalog.backends.memory import MemoryCatalog

CYCLES = 20_000


async def _cycle(catalog: MemoryCatalog, rounds: int) -> None:
    for _ in range(rounds):
        lease = await catalog.create_lease(3600)
        assert await catalog.revoke(lease.id)


async def test_create_and_revoke_cycles_leave_no_memory_behind() -> None:
    catalog = MemoryCatalog()
    kept = [await catalog.create_lease(3600) for _ in range(100)]  # live leases stay put
    await _cycle(catalog, 1_000)  # warm up caches and the heap's own growth
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await _cycle(catalog, CYCLES)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await catalog.close()
    # A leaked heap entry costs ~150 bytes: 20,000 of them are ~3 MB.
    assert grown < 200_000, f"{grown} bytes kept after {CYCLES} create+revoke cycles"
    assert catalog.lease_count == len(kept)
    for lease in kept:
        assert await catalog.lease(lease.id) is not None
