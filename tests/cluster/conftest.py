"""One three-host cluster per backend, shared by that backend's scenarios in file order.

The scenarios run on one set-up because each leaves the cluster as it found it (links up,
members running, every host's pilotfish serving) — except host loss, which runs last.
The timing table of every cluster is printed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.cluster.hosts import Cluster
from tests.cluster.scenarios import Timings
from tests.cluster.workload import Workload

TABLES: list[Timings] = []


@dataclass
class Deployed:
    """A running cluster, the containers on it and the timings measured so far."""

    cluster: Cluster
    work: Workload
    timings: Timings


def _deploy(backend: str) -> Iterator[Deployed]:
    with Cluster(backend) as cluster:
        timings = Timings(backend)
        TABLES.append(timings)
        yield Deployed(cluster, Workload(cluster), timings)
        crashes = cluster.crashes()
    assert not crashes, crashes


@pytest.fixture(scope="module")
def etcd_hosts() -> Iterator[Deployed]:
    """Three test hosts on a three-member etcd cluster."""
    yield from _deploy("etcd")


@pytest.fixture(scope="module")
def zk_hosts() -> Iterator[Deployed]:
    """Three test hosts on a three-server ZooKeeper ensemble."""
    yield from _deploy("zk")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every cluster's timing table, pass or fail."""
    for timings in TABLES:
        if timings.rows:
            terminalreporter.write_sep("-", f"multi-host timings ({timings.label})")
            terminalreporter.write_line(timings.table())
