"""The catalog contract for health checks: every backend stores an instance's checks as given,
and every reader sees the same overall health from them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from pilotfish.catalog import Catalog, Instance
from pilotfish.catalog.model import Check
from tests.fixtures.watching import wait_until


def checked(service: str, instance_id: str, lease: str, *checks: Check) -> Instance:
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=8080,
                    lease=lease, checks=checks)


HTTP = Check(id="http", name="GET /health", kind="http", status="passing", output="HTTP 200",
             changed=1_700_000_000.5, target="http://127.0.0.1:8080/health", interval=1.0,
             timeout=0.5)
TCP = Check(id="tcp:8080", name="port 8080", kind="tcp", status="warning", output="slow",
            target="127.0.0.1:8080", interval=10.0, timeout=2.0, deregister_after=90.0)


async def test_checks_round_trip_in_order(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    ttl = Check(id="app", name="app heartbeat", kind="ttl", status="passing", ttl=15.0,
                changed=time.time(), expires_at=time.time() + 15, output="ok " * 1500)
    instance = checked(f"chk-{unique}", f"c-{unique}", lease.id, TCP, HTTP, ttl)
    assert await catalog.register(instance) is True
    snapshot = await wait_until(catalog, lambda s: s.get(f"c-{unique}"), 5)
    assert snapshot.get(f"c-{unique}") == instance
    assert await catalog.register(instance) is False  # the same checks: nothing changed


async def test_a_status_change_is_a_reregistration_every_reader_sees(
    catalog: Catalog, unique: str
) -> None:
    lease = await catalog.create_lease(30)
    instance = checked(f"chs-{unique}", f"s-{unique}", lease.id, HTTP)
    await catalog.register(instance)
    await wait_until(catalog, lambda s: s.get(f"s-{unique}"), 5)
    failing = replace(instance, checks=(replace(HTTP, status="critical", output="HTTP 404"),))
    assert await catalog.register(failing) is False
    snapshot = await wait_until(
        catalog, lambda s: (i := s.get(f"s-{unique}")) is not None and not i.serving, 5)
    seen = snapshot.get(f"s-{unique}")
    assert seen is not None
    assert (seen.health, seen.overall_health(), seen.checks[0].output) == (
        "passing", "critical", "HTTP 404")
    assert list(snapshot.service(f"chs-{unique}")) == [seen]  # still registered, only not served
    warned = replace(instance, checks=(replace(HTTP, status="warning"),))
    await catalog.register(warned)
    snapshot = await wait_until(
        catalog, lambda s: (i := s.get(f"s-{unique}")) is not None and i.serving, 5)
    assert snapshot.get(f"s-{unique}") == warned  # warning is still served (only_passing=false)


async def test_checks_can_be_dropped_by_registering_without_them(
    catalog: Catalog, unique: str
) -> None:
    lease = await catalog.create_lease(30)
    instance = checked(f"chd-{unique}", f"d-{unique}", lease.id, HTTP, TCP)
    await catalog.register(instance)
    await wait_until(catalog, lambda s: s.get(f"d-{unique}"), 5)
    await catalog.register(replace(instance, checks=(TCP,)))
    snapshot = await wait_until(
        catalog, lambda s: (i := s.get(f"d-{unique}")) is not None and len(i.checks) == 1, 5)
    assert snapshot.get(f"d-{unique}") == replace(instance, checks=(TCP,))
    await catalog.register(replace(instance, checks=()))
    snapshot = await wait_until(
        catalog, lambda s: (i := s.get(f"d-{unique}")) is not None and not i.checks, 5)
    assert snapshot.get(f"d-{unique}") == replace(instance, checks=())


async def test_an_overdue_ttl_check_is_critical_as_read_back(catalog: Catalog, unique: str) -> None:
    lease = await catalog.create_lease(30)
    now = time.time()
    ttl = Check(id="beat", name="heartbeat", kind="ttl", status="passing", ttl=2.0,
                changed=now, expires_at=now + 1.0)
    await catalog.register(checked(f"cht-{unique}", f"t-{unique}", lease.id, ttl))
    snapshot = await wait_until(catalog, lambda s: s.get(f"t-{unique}"), 5)
    seen = snapshot.get(f"t-{unique}")
    assert seen is not None and seen.serving
    await asyncio.sleep(max(0.0, now + 1.05 - time.time()))
    assert seen.overall_health() == "critical" and not seen.serving
    assert seen.overall_health(now) == "passing"


async def test_a_registrar_putting_an_instance_again_keeps_its_ttl_report(
    catalog: Catalog, unique: str
) -> None:
    lease = await catalog.create_lease(30)
    declared = Check(id="beat", name="heartbeat", kind="ttl", ttl=30.0)  # no report: changed 0
    instance = checked(f"chm-{unique}", f"m-{unique}", lease.id, declared, HTTP)
    await catalog.register(instance)
    now = time.time()
    reported = replace(declared, status="passing", output="ok", changed=now, expires_at=now + 30)
    await catalog.register(replace(instance, checks=(reported, HTTP)))
    await wait_until(catalog, lambda s: (i := s.get(f"m-{unique}")) is not None and i.serving, 5)
    assert await catalog.register(instance) is False  # the registrar's copy, after an outage
    snapshot = await wait_until(catalog, lambda s: s.get(f"m-{unique}"), 5)
    seen = snapshot.get(f"m-{unique}")
    assert seen is not None and seen.checks == (reported, HTTP)
