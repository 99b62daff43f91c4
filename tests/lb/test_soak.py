"""Soak: 200,000 short connections through a real pilotfish on uvloop, on the epoll engine, and
a quarter of that on the transports engine (there it is the write_eof guard)."""

from __future__ import annotations

import os
import time

import pytest

from tests.fixtures.watching import eventually
from tests.lb.conftest import Backend, open_fds, start_lb
from tests.lb.load import run_load

COUNT = int(os.environ.get("PILOTFISH_SOAK_CONNECTIONS", "200000"))
CONCURRENCY = 48
LIMIT = 40  # global connection limit below the client's concurrency: some get refused


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("engine", "count"), [("epoll", COUNT), ("transports", COUNT // 4)])
async def test_soak_short_connections_half_of_them_half_closing(
        backends: list[Backend], engine: str, count: int) -> None:
    lb = start_lb("web", extra=("--lb-max-connections", str(LIMIT), "--lb-engine", engine))
    try:
        for backend in backends:
            lb.register("web", backend.name, backend.port)
        port = lb.routes["web"]
        lb.wait_instances(port, 3)
        await run_load(port, 200, 8)  # warm up: every lazy allocation happens now
        fds_before = open_fds(lb.process.process.pid)
        started = time.monotonic()
        outcome = await run_load(port, count, CONCURRENCY, deadline=240)
        elapsed = time.monotonic() - started
        print(f"soak ({engine}): {count} connections in {elapsed:.1f}s ({count / elapsed:.0f}/s), "
              f"served {outcome.completed}, failed {dict(outcome.failed)}")
        assert lb.process.process.poll() is None, "".join(lb.process.lines[-50:])
        assert outcome.completed + sum(outcome.failed.values()) == count
        refused = lb.metric("pilotfish_lb_connections_refused_total", reason="limit")
        # every failure the client saw is a connection the LB refused at its limit
        assert sum(outcome.failed.values()) == refused, (outcome.failed, lb.metrics_text())
        assert set(outcome.failed) <= {"ECONNRESET", "EPIPE", "ENOTCONN"}  # how a reset shows
        assert outcome.completed > count * 0.5
        await eventually(lambda: lb.metric("pilotfish_lb_connections") == 0, 5,
                         "every connection closed")
        assert open_fds(lb.process.process.pid) <= fds_before + 2  # the metrics scrape's own
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()
    assert lb.process.process.returncode == 0, "".join(lb.process.lines[-50:])
