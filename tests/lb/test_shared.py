"""Connection counts across workers (pilotfish.lb.shared): each worker writes its own row,
readers sum every worker's; the pickers and the limits of two workers' gates see each other.

Two "workers" here are two attachments of one counts file in this process, each with its own
gate for the same route: exactly what two worker processes hold, without the processes (the
multi-worker tests in test_workers.py run the real ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.config import HostPort
from pilotfish.lb.gate import Occupancy, RouteGate
from pilotfish.lb.pickers import LeastConnections, PowerOfTwo
from pilotfish.lb.pool import Backend, Pool
from pilotfish.lb.routes import Route
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import SharedCounts


@pytest.fixture
def counts(tmp_path: Any) -> Iterator[SharedCounts]:
    """A parent's counts file for two workers, removed after the test."""
    made = SharedCounts.create(2, rows=64, directory=str(tmp_path))
    yield made
    made.close()
    made.unlink()


def instance(port: int) -> Instance:
    return Instance("web", f"web-{port}", "127.0.0.1", port, "lease")


class FakeLink:
    """A client connection as the gate sees it; dial() records the backend picked."""

    def __init__(self) -> None:
        self.closed = False
        self.backend: Backend | None = None
        self.tried: list[Backend] | tuple[()] = ()
        self.peername: Any = ("127.0.0.9", 5000)
        self.sockname: Any = ("127.0.0.1", 9000)
        self.idle = 0
        self.seen = 0
        self.refused = False

    def learn_addresses(self) -> None: ...

    def dial(self, backend: Backend, timeout: float) -> None:
        self.backend = backend

    def refuse(self) -> None:
        self.refused = True

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def moved(self) -> tuple[int, int] | None:
        return (0, 0)


def worker_gate(counts_path: str, index: int, route: Route) -> tuple[SharedCounts, RouteGate]:
    counts = SharedCounts.attach(counts_path, index)
    gate = RouteGate(route, LbSettings(), Occupancy(counts), lambda _: None)
    gate.accepting = True
    gate.update(Snapshot(1, (instance(7001), instance(7002))))
    return counts, gate


def open_link(gate: RouteGate) -> FakeLink:
    """Admit a client and complete its dial, as an engine would."""
    link = FakeLink()
    assert gate.admit(link)  # type: ignore[arg-type]
    assert link.backend is not None
    assert gate.connected(link, link.backend) == b""  # type: ignore[arg-type]
    link.backend.connections.add(link)
    return link


def test_each_worker_writes_its_row_and_readers_sum_them(counts: SharedCounts) -> None:
    first, second = SharedCounts.attach(counts.path, 0), SharedCounts.attach(counts.path, 1)
    a, b = first.cell("x"), second.cell("x")
    assert a is not None and b is not None
    a.add(2)
    b.add(3)
    assert a.total() == b.total() == counts.total("x") == 5
    first.release(a)
    assert counts.total("x") == 3
    SharedCounts.attach(counts.path, 1)  # worker 1 restarts: its old counts are gone
    assert counts.total("x") == 0


def test_a_full_region_leaves_new_keys_local(counts: SharedCounts) -> None:
    worker = SharedCounts.attach(counts.path, 0)
    cells = [worker.cell(f"k{i}") for i in range(64)]
    assert all(cell is not None for cell in cells)
    assert worker.cell("one-too-many") is None
    for i, cell in enumerate(cells):
        assert cell is not None
        cell.add(i)
    assert [counts.total(f"k{i}") for i in range(64)] == list(range(64))


@pytest.mark.parametrize("picker", [LeastConnections, PowerOfTwo])
async def test_least_connections_counts_every_workers_connections(
        counts: SharedCounts, picker: type[LeastConnections | PowerOfTwo]) -> None:
    route = Route(HostPort("127.0.0.1", 9000), "web", balance="least_conn")
    _, busy = worker_gate(counts.path, 0, route)
    _, idle = worker_gate(counts.path, 1, route)
    loaded = busy.pool.backends[("127.0.0.1", 7001)]
    for _ in range(3):  # worker 0 holds three connections on 7001
        loaded.active += 1
        assert loaded.cell is not None
        loaded.cell.add(1)
    chooser = picker()
    for _ in range(20):  # worker 1 has no connection of its own: the sum decides
        chosen = chooser.pick(idle.pool.candidates(), "127.0.0.9", ())
        assert chosen is not None and chosen.port == 7002


async def test_a_route_limit_holds_across_workers(counts: SharedCounts) -> None:
    route = Route(HostPort("127.0.0.1", 9000), "web", max_connections=4)
    _, first = worker_gate(counts.path, 0, route)
    _, second = worker_gate(counts.path, 1, route)
    links = [open_link(first) for _ in range(3)] + [open_link(second)]
    assert counts.total("r|127.0.0.1:9000") == 4
    refused = FakeLink()
    assert not first.admit(refused)  # type: ignore[arg-type]
    assert not second.admit(refused)  # type: ignore[arg-type]
    assert first.stats.refused == second.stats.refused == {"limit": 1}
    first.finished(links[0])  # type: ignore[arg-type]  # one ends in worker 0: worker 1 may admit
    assert counts.total("r|127.0.0.1:9000") == 3
    open_link(second)
    assert counts.total("*") == 4
    assert sum(counts.total(f"b|127.0.0.1:9000|127.0.0.1:{p}") for p in (7001, 7002)) == 4


async def test_the_global_limit_holds_across_workers(counts: SharedCounts) -> None:
    settings = LbSettings(max_connections=2)
    gates = []
    for index, port in ((0, 9000), (1, 9001)):
        worker = SharedCounts.attach(counts.path, index)
        gate = RouteGate(Route(HostPort("127.0.0.1", port), "web"), settings,
                         Occupancy(worker), lambda _: None)
        gate.accepting = True
        gate.update(Snapshot(1, (instance(7001),)))
        gates.append(gate)
    open_link(gates[0])
    open_link(gates[1])
    assert not gates[1].admit(FakeLink())  # type: ignore[arg-type]
    assert gates[1].stats.refused == {"limit": 1}


async def test_a_route_gone_gives_its_rows_back(counts: SharedCounts) -> None:
    route = Route(HostPort("127.0.0.1", 9000), "web")
    worker, gate = worker_gate(counts.path, 0, route)
    link = open_link(gate)
    gate.stop_accepting()
    assert counts.total("r|127.0.0.1:9000") == 1  # draining: still counted
    gate.finished(link)  # type: ignore[arg-type]
    assert gate.cell is None and not worker._cells.keys() - {"*"}
    assert counts.total("r|127.0.0.1:9000") == 0


def test_an_ejection_made_elsewhere_is_applied_once_and_counted_where_made() -> None:
    settings = LbSettings(eject_after=1)
    made, applied = Pool(settings), Pool(settings)
    heard: list[Backend] = []
    made.on_ejected = heard.append
    for pool in (made, applied):
        pool.update([instance(7001), instance(7002), instance(7003)])
    backend = made.backends[("127.0.0.1", 7001)]
    made.connect_failed(backend)
    assert heard == [backend] and backend.ejections == 1
    applied.eject(backend.key, backend.ejected_until, backend.eject_backoff)
    mirrored = applied.backends[backend.key]
    assert mirrored.ejected(time.monotonic()) and mirrored.ejections == 0
    assert [b.port for b in applied.candidates()] == [7002, 7003]
    made.eject(backend.key, backend.ejected_until, backend.eject_backoff)  # its own, shipped back
    assert backend.ejections == 1


def test_health_verdicts_made_elsewhere_take_backends_out() -> None:
    pool = Pool(LbSettings())
    pool.update([instance(7001), instance(7002), instance(7003)])
    pool.set_health({("127.0.0.1", 7002)})
    assert [b.port for b in pool.candidates()] == [7001, 7003]
    pool.set_health(set())
    assert [b.port for b in pool.candidates()] == [7001, 7002, 7003]
