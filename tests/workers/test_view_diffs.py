"""The view travels to workers as diffs keyed by instance id, and a replica rebuilds it."""

from __future__ import annotations

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.workers.diff import ViewDiff, ViewState, apply, between, full
from pilotfish.workers.part import sum_samples
from pilotfish.workers.replica import ReplicaView

FRESH = ViewState(ready=True, stale=False, stale_since=None, changed_at=1.0)


def instance(number: int, port: int = 80) -> Instance:
    return Instance(service="web", id=f"web-{number}", address=f"10.0.0.{number}", port=port,
                    lease="lease-1")


def test_a_diff_carries_only_what_changed() -> None:
    old = Snapshot(5, [instance(n) for n in range(1, 101)])
    new = Snapshot(6, [*(instance(n) for n in range(2, 100)), instance(100, port=81),
                       instance(101)])
    diff = between(old, new, FRESH)
    assert sorted(i.id for i in diff.upsert) == ["web-100", "web-101"]
    assert diff.remove == ("web-1",)
    assert apply(old, diff).instances == new.instances
    assert apply(old, diff).index == 6


def test_a_full_state_replaces_what_a_worker_had() -> None:
    had = Snapshot(3, [instance(9)])
    now = Snapshot(8, [instance(1), instance(2)])
    assert apply(had, full(now, FRESH)).instances == now.instances


def test_the_replica_tells_subscribers_when_instances_move_only() -> None:
    replica = ReplicaView()
    seen: list[int] = []
    replica.subscribe(lambda snapshot: seen.append(snapshot.index))
    assert not replica.ready.is_set()
    replica.receive(full(Snapshot(1, [instance(1)]), FRESH))
    replica.receive(between(replica.snapshot, Snapshot(2, [instance(1), instance(2)]), FRESH))
    stale = ViewState(ready=True, stale=True, stale_since=2.0, changed_at=1.0)
    replica.receive(ViewDiff(2, (), (), stale))
    assert seen == [1, 2]
    assert replica.ready.is_set() and replica.stale and replica.stale_since == 2.0
    assert sorted(replica.snapshot.instances) == ["web-1", "web-2"]


def test_counters_add_up_and_gauges_take_the_largest() -> None:
    summed = sum_samples([
        [("q_total", (("rcode", "NOERROR"),), 3.0), ("names", (), 7.0)],
        [("q_total", (("rcode", "NOERROR"),), 4.0), ("names", (), 7.0)],
    ])
    assert sorted(summed) == [("names", (), 7.0), ("q_total", (("rcode", "NOERROR"),), 7.0)]
