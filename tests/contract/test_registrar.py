"""The registrar on every backend: one lease for many instances, re-registered when lost."""

from __future__ import annotations

import asyncio

from pilotfish.registry import Catalog
from pilotfish.registry.registrar import Registrar
from tests.watching import instance, wait_until


async def test_registrar_keeps_instances_alive_past_the_ttl(catalog: Catalog, unique: str) -> None:
    registrar = Registrar(catalog, ttl=2, owner=f"sidecar-{unique}")
    await registrar.start()
    try:
        for n in range(3):
            await registrar.add(instance(f"reg-{unique}", f"r{n}-{unique}", 9000 + n))
        await wait_until(catalog, lambda s: len(s.service(f"reg-{unique}")) == 3, 5)
        await asyncio.sleep(3.5)  # well past the TTL: only keepalives hold them
        assert len((await catalog.snapshot()).service(f"reg-{unique}")) == 3
        leases = {i.lease for i in (await catalog.snapshot()).service(f"reg-{unique}")}
        assert leases == {registrar.lease_id}
    finally:
        await registrar.stop()
    await wait_until(catalog, lambda s: not s.service(f"reg-{unique}"), 5)


async def test_registrar_registers_again_when_its_lease_is_lost(
    catalog: Catalog, unique: str
) -> None:
    registrar = Registrar(catalog, ttl=3, owner=f"sidecar-{unique}")
    await registrar.start()
    try:
        await registrar.add(instance(f"rr-{unique}", f"a-{unique}", 9000))
        await registrar.add(instance(f"rr-{unique}", f"b-{unique}", 9001))
        await wait_until(catalog, lambda s: len(s.service(f"rr-{unique}")) == 2, 5)
        lost = registrar.lease_id
        assert lost is not None
        await catalog.revoke(lost)  # as if the registry forgot it
        await wait_until(catalog, lambda s: not s.service(f"rr-{unique}"), 5)
        # back within one keepalive interval (1 s), plus the backend's own latency (three
        # writes, which took up to 2 s on a loaded machine with the Consul double)
        snapshot = await wait_until(catalog, lambda s: len(s.service(f"rr-{unique}")) == 2, 4)
        assert registrar.lease_id != lost
        assert registrar.reregistrations == 1
        assert {i.lease for i in snapshot.service(f"rr-{unique}")} == {registrar.lease_id}
        await registrar.remove(f"a-{unique}")
        await wait_until(catalog, lambda s: len(s.service(f"rr-{unique}")) == 1, 5)
    finally:
        await registrar.stop()
