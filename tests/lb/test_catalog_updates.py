"""1,000 catalog changes while connections stream: no established connection is reset."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.fixtures.servers import HOST
from tests.lb.conftest import Backend, start_lb
from tests.lb.load import run_load

CHANGES = 1000


async def _stream(port: int, stop: asyncio.Event) -> int:
    """Echo round trips on one connection until stopped; returns how many."""
    reader, writer = await asyncio.open_connection(HOST, port)
    await reader.readline()
    trips = 0
    try:
        while not stop.is_set():
            message = f"trip {trips}\n".encode() * 64
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
            trips += 1
    finally:
        writer.close()
    return trips


async def test_catalog_changes_under_load_reset_nothing(backends: list[Backend]) -> None:
    lb = start_lb("web")
    try:
        for backend in backends:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web"]
        lb.wait_instances(port, 3)
        stop = asyncio.Event()
        streams = [asyncio.create_task(_stream(port, stop)) for _ in range(12)]
        short = asyncio.create_task(run_load(port, 1_000_000, 4, deadline=600, stop=stop))
        b0, b1, b2 = backends
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=lb.process.api, timeout=10) as api:
            for change in range(CHANGES):
                kind = change % 4
                if kind == 0:  # same (address, port) as b2 under another id
                    response = await api.put("/v1/services/web/instances/flap", json={
                        "address": HOST, "port": b2.port, "ttl": 60})
                elif kind == 1:
                    response = await api.delete("/v1/services/web/instances/flap")
                elif kind == 2:  # b1 leaves (drains) ...
                    response = await api.delete("/v1/services/web/instances/b1")
                else:  # ... and comes back; b0 changes weight and tags meanwhile
                    response = await api.put("/v1/services/web/instances/b1", json={
                        "address": HOST, "port": b1.port, "ttl": 60})
                    assert response.status_code in (200, 201)
                    response = await api.put("/v1/services/web/instances/b0", json={
                        "address": HOST, "port": b0.port, "ttl": 60,
                        "weight": change % 7 + 1, "tags": [f"t{change}"]})
                assert response.status_code in (200, 201, 204), response.text
                if change % 50 == 0:
                    await asyncio.sleep(0)  # let the load run between bursts
        elapsed = time.monotonic() - started
        stop.set()
        trips = await asyncio.gather(*streams)  # a reset stream raises here
        outcome = await short
        assert not outcome.failed and outcome.completed > 100, outcome
        assert all(t > 0 for t in trips), trips
        assert lb.metric("pilotfish_lb_connections_refused_total") == 0
        assert lb.metric("pilotfish_lb_instance_connections_failed_total") == 0
        print(f"{CHANGES} changes in {elapsed:.1f}s; stream round trips {sum(trips)}, "
              f"short connections {outcome.completed}")
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


async def test_short_connections_during_changes_all_complete(backends: list[Backend]) -> None:
    lb = start_lb("web?balance=round_robin")
    try:
        for backend in backends:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web?balance=round_robin"]
        lb.wait_instances(port, 3)
        load = asyncio.create_task(run_load(port, 3000, 8))
        async with httpx.AsyncClient(base_url=lb.process.api, timeout=10) as api:
            while not load.done():
                for instance in ("b1", "b2"):
                    await api.delete(f"/v1/services/web/instances/{instance}")
                    await api.put(f"/v1/services/web/instances/{instance}", json={
                        "address": HOST, "port": backends[int(instance[1])].port, "ttl": 60})
        outcome = await load
        assert not outcome.failed and outcome.completed == 3000
    finally:
        lb.close()
