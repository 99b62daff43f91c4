"""The multi-host scenarios on three test hosts sharing a three-server ZooKeeper ensemble:
across hosts, partition, clock skew (ZooKeeper's expiry is the writer's wall clock alone),
host loss (last: it leaves host a dead)."""

import pytest

from tests.cluster import scenarios
from tests.cluster.conftest import Deployed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_container_on_one_host_is_answered_and_balanced_on_the_others(
        zk_hosts: Deployed) -> None:
    scenarios.across_hosts(zk_hosts.cluster, zk_hosts.work, zk_hosts.timings)


def test_partitioned_host_is_dropped_elsewhere_serves_its_last_view_and_comes_back(
        zk_hosts: Deployed) -> None:
    scenarios.partition(zk_hosts.cluster, zk_hosts.work, zk_hosts.timings)


def test_clock_two_seconds_ahead_within_the_stated_bound(zk_hosts: Deployed) -> None:
    scenarios.clock_skew(zk_hosts.cluster, zk_hosts.work, zk_hosts.timings)


def test_host_loss_removes_its_containers_everywhere_else(zk_hosts: Deployed) -> None:
    scenarios.host_loss(zk_hosts.cluster, zk_hosts.work, zk_hosts.timings, "zk")
