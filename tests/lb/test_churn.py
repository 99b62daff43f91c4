"""Churn: a backend SIGKILLed under load, brought back, and drained by deregistration."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fixtures.servers import HOST
from tests.lb.conftest import ENGINES, Backend, start_lb
from tests.lb.load import run_load

CHECKS = ("--lb-check-interval", "0.3", "--lb-check-timeout", "0.3", "--lb-rise", "2",
          "--lb-fall", "2", "--lb-eject-time", "0.5")


@pytest.mark.parametrize("engine", ENGINES)
async def test_sigkill_costs_clients_nothing_after_a_second_and_it_comes_back(
        backends: list[Backend], engine: str) -> None:
    lb = start_lb("web", extra=(*CHECKS, "--lb-engine", engine))
    try:
        for backend in backends:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web"]
        lb.wait_instances(port, 3)
        load = asyncio.create_task(run_load(port, 1_000_000, 8, deadline=4.0))
        await asyncio.sleep(1.0)
        backends[1].kill()
        killed_at = time.monotonic()
        outcome = await load
        late = [t - killed_at for t in outcome.failures_at if t > killed_at + 1.0]
        assert not late, f"{len(late)} clients that came more than 1 s after the kill " \
                         f"failed: {late[:5]}"
        assert outcome.completed > 1000
        assert lb.metric("pilotfish_lb_instance_healthy", id="b1") == 0  # active checks
        assert lb.metric("pilotfish_lb_retries_total") > 0  # connects retried elsewhere

        backends[1].start()  # same port: the checks bring it back
        deadline = time.monotonic() + 10
        while True:
            outcome = await run_load(port, 300, 8)
            assert not outcome.failed
            if outcome.served["b1"] > 0:
                break
            assert time.monotonic() < deadline, "b1 never served again"
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


@pytest.mark.parametrize("engine", ENGINES)
async def test_deregistering_drains_a_streaming_connection(backends: list[Backend],
                                                           engine: str) -> None:
    lb = start_lb("web", extra=("--lb-engine", engine))
    try:
        for backend in backends:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web"]
        lb.wait_instances(port, 3)
        reader, writer = await asyncio.open_connection(HOST, port)
        name = (await reader.readline()).decode().strip()

        async def ping(n: int) -> None:
            message = f"ping {n}\n".encode() * 100
            writer.write(message)
            assert await reader.readexactly(len(message)) == message

        await ping(0)
        lb.deregister("web", name)
        lb.wait_instances(port, 2)
        assert lb.metric("pilotfish_lb_instance_draining", id=name) == 1
        outcome = await run_load(port, 300, 8)  # new clients avoid the draining instance
        assert name not in outcome.served and outcome.completed == 300
        for n in range(1, 50):  # the old connection keeps streaming through it
            await ping(n)
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        deadline = time.monotonic() + 5
        while lb.metric("pilotfish_lb_instance_draining", id=name):
            assert time.monotonic() < deadline, "drained instance never left the pool"
            await asyncio.sleep(0.05)
    finally:
        lb.close()
