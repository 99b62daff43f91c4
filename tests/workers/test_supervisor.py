"""Two worker processes serving DNS on one port: both answer, both follow the registry,
a killed one comes back while the other serves, SIGHUP and stop reach every one."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import statistics
import time

import dns.message
import dns.query
import dns.rcode

from pilotfish.catalog.model import Instance
from pilotfish.dns.stats import QUERIES
from pilotfish.ui.recent import RecentLog
from pilotfish.workers.logs import RATE
from tests.workers.conftest import DOMAIN, Parent


def answered(parent: Parent, per_worker: list[list[tuple[str, tuple[tuple[str, str], ...],
                                                          float]]]) -> list[float]:
    return [sum(value for name, _, value in samples if name == QUERIES)
            for samples in per_worker]


async def register(parent: Parent, number: int, served: bool = False) -> None:
    """Register svc<number>; with `served`, return once a few queries have its answer."""
    lease = await parent.catalog.create_lease(30)
    await parent.catalog.register(Instance(service=f"svc{number}", id=f"i{number}",
                                           address="10.1.0.1", port=80, lease=lease.id))
    deadline = time.monotonic() + 5
    hits = 0
    while served and hits < 8:
        assert time.monotonic() < deadline, f"svc{number} was never answered"
        reply = await asyncio.to_thread(parent.ask, f"svc{number}.service.{DOMAIN}")
        hits += 1 if reply.answer else 0


async def test_queries_are_answered_by_both_workers(parent: Parent) -> None:
    await register(parent, 0, served=True)
    await parent.supervisor.refresh()
    already = sum(answered(parent, parent.supervisor.per_worker("dns")))
    for _ in range(200 - int(already)):
        reply = await asyncio.to_thread(parent.ask, f"svc0.service.{DOMAIN}")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    await parent.supervisor.refresh()
    counts = answered(parent, parent.supervisor.per_worker("dns"))
    assert all(count > 0 for count in counts), counts
    assert sum(counts) == 200
    text = await parent.stack.metrics.scrape()  # exact at scrape time: asked then
    assert sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(QUERIES + "{")) == 200
    assert sum(parent.dns.report()["answers"].values()) == 200


async def one_socket_per_worker(parent: Parent) -> list[socket.socket]:
    """UDP sockets whose source port the kernel hashes to worker 0 and to worker 1."""
    found: dict[int, socket.socket] = {}
    spare: list[socket.socket] = []
    while len(found) < 2:
        assert len(spare) < 40, "the kernel sent every source port to one worker"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)  # dnspython's timeout only works on a non-blocking socket
        await parent.supervisor.refresh()
        before = answered(parent, parent.supervisor.per_worker("dns"))
        query = dns.message.make_query(f"nothing.service.{DOMAIN}", "A")
        await asyncio.to_thread(dns.query.udp, query, "127.0.0.1", port=parent.port,
                                timeout=1, sock=sock)
        await parent.supervisor.refresh()
        after = answered(parent, parent.supervisor.per_worker("dns"))
        worker = [b != a for b, a in zip(before, after, strict=True)].index(True)
        if worker in found:
            spare.append(sock)
        else:
            found[worker] = sock
    for sock in spare:
        sock.close()
    return [found[0], found[1]]


def poll_until_answered(sockets: list[socket.socket], port: int, name: str) -> float:
    """Ask on every socket until each has an answer; when the last one came."""
    pending = set(sockets)
    wire = dns.message.make_query(name, "A").to_wire()
    deadline = time.perf_counter() + 2
    while pending and time.perf_counter() < deadline:
        for sock in list(pending):
            sock.sendto(wire, ("127.0.0.1", port))
            sock.settimeout(0.5)
            if dns.message.from_wire(sock.recv(2048)).answer:
                pending.discard(sock)
        time.sleep(0.0005)  # leave the parent's loop (same process, one GIL) room to ship
    assert not pending, f"{name} never answered by every worker"
    return time.perf_counter()


async def test_a_registration_reaches_every_worker_within_20_ms(parent: Parent) -> None:
    sockets = await one_socket_per_worker(parent)
    delays = []
    try:
        for number in range(1, 111):  # the first ten warm up (imports, first zone builds)
            name = f"svc{number}.service.{DOMAIN}"
            started = time.perf_counter()
            polling = asyncio.create_task(asyncio.to_thread(
                poll_until_answered, sockets, parent.port, name))
            await register(parent, number)
            delays.append(await polling - started)
    finally:
        for sock in sockets:
            sock.close()
    whoami = await parent.supervisor.call("probe", "whoami")
    assert {index for _, index, _ in whoami} == {parent.stack.view().snapshot.index}
    delays = delays[10:]
    p99 = statistics.quantiles(delays, n=100)[98]
    print(f"register -> answered by both workers: median "
          f"{statistics.median(delays) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    # The bound is 20 ms p99 (docs/performance.md measures it on a quiet machine); this
    # 2-core CI machine is shared, so its scheduling tail is allowed up to 100 ms here,
    # while nine in ten must already be within the 20 ms.
    p90 = statistics.quantiles(delays, n=10)[8]
    assert p90 <= 0.020, f"register -> answered by every worker: p90 {p90 * 1000:.1f} ms"
    assert p99 <= 0.100, f"register -> answered by every worker: p99 {p99 * 1000:.1f} ms"


async def test_a_killed_worker_is_restarted_while_the_other_serves(parent: Parent) -> None:
    await register(parent, 50, served=True)
    name = f"svc50.service.{DOMAIN}"
    for _ in range(20):
        await asyncio.to_thread(parent.ask, name)
    await parent.supervisor.refresh()
    before = answered(parent, [parent.supervisor.samples("dns")])[0]
    victim = parent.supervisor.pids[0]
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    # Queries queued on the dying worker's socket die with it: ask once the supervisor has
    # reaped it (its threads gone, its socket closed).
    while parent.supervisor.slots[0].live and parent.supervisor.pids[0] == victim:
        assert time.monotonic() < deadline, "the killed worker did not exit"
        await asyncio.sleep(0.01)
    for _ in range(100):  # the survivor takes every query meanwhile
        reply = await asyncio.to_thread(parent.ask, name)
        assert reply.answer
    deadline = time.monotonic() + 10
    while not (parent.supervisor.slots[0].live and parent.supervisor.pids[0] != victim):
        assert time.monotonic() < deadline, "worker 0 was not restarted"
        await asyncio.sleep(0.05)
    await register(parent, 51)  # the new worker started from a full view, then diffs
    await asyncio.sleep(0.05)
    whoami = await parent.supervisor.call("probe", "whoami")
    assert len(whoami) == 2
    assert all("i51" in ids and "i50" in ids for _, _, ids in whoami)
    await parent.supervisor.refresh()
    assert answered(parent, [parent.supervisor.samples("dns")])[0] >= before + 100
    text = await parent.stack.metrics.scrape()
    assert "pilotfish_worker_restarts_total 1.0" in text
    assert "pilotfish_workers 2.0" in text


async def test_sighup_reaches_every_worker(parent: Parent) -> None:
    parent.supervisor.sighup()
    parent.supervisor.sighup()
    await asyncio.sleep(0.1)
    await parent.supervisor.refresh()
    assert ("probe_sighups_total", (), 4.0) in parent.supervisor.samples("probe")
    for worker in range(2):
        [answer] = [a for a in await parent.supervisor.call("probe", "whoami")
                    if a[0] == worker]
        assert answer[0] == worker


async def test_a_worker_reports_to_the_parent(parent: Parent) -> None:
    parent.supervisor.tell("probe", "report", "ejected 10.0.0.1:80")
    deadline = time.monotonic() + 5
    while len(parent.reports) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert sorted(parent.reports) == [(0, "echo", "ejected 10.0.0.1:80"),
                                      (1, "echo", "ejected 10.0.0.1:80")]


async def test_stop_drains_every_worker_and_a_worker_without_parent_exits(
        parent: Parent) -> None:
    slot = parent.supervisor.slots[1]
    orphan = slot.process
    assert orphan is not None and slot.channel is not None
    await slot.channel.close()  # as if the parent had died: the pipe reaches EOF
    assert await asyncio.wait_for(orphan.wait(), 5) == 0
    pids = [pid for pid in parent.supervisor.pids if pid is not None]
    await parent.supervisor.stop()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"worker {pid} still runs after stop")


async def test_a_workers_warnings_reach_the_parents_status_page(parent: Parent) -> None:
    """Workers print their own lines; the parent's recent-errors list gets them too, at most
    20 a second from each worker, and says how many it left out."""
    recent = RecentLog(kept=100)
    logging.getLogger("pilotfish.probe").addHandler(recent)
    try:
        parent.supervisor.tell("probe", "warn", [f"backend {n} refused" for n in range(50)])
        deadline = time.monotonic() + 5
        while len(recent.lines()) < 2 * RATE:
            assert time.monotonic() < deadline, recent.lines()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more arrives: the rest were over the rate
        assert len(recent.lines()) == 2 * RATE
        assert {line["level"] for line in recent.lines()} == {"warning"}
        await asyncio.sleep(1.0)  # a second later each worker may send again
        parent.supervisor.tell("probe", "warn", ["after the burst"])
        deadline = time.monotonic() + 5
        while len(recent.lines()) < 2 * RATE + 2:
            assert time.monotonic() < deadline, recent.lines()
            await asyncio.sleep(0.05)
        assert [line["message"] for line in recent.lines()[:2]] == [
            "after the burst (30 earlier lines only in this worker's log)"] * 2
    finally:
        logging.getLogger("pilotfish.probe").removeHandler(recent)
