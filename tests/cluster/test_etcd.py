"""The multi-host scenarios on three test hosts sharing a three-member etcd cluster.

In file order on one set-up (tests/cluster/conftest.py); host loss is last because it
leaves host a dead.
"""

import pytest

from tests.cluster import scenarios
from tests.cluster.conftest import Deployed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_container_on_one_host_is_answered_and_balanced_on_the_others(
        etcd_hosts: Deployed) -> None:
    scenarios.across_hosts(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_rolling_restart_keeps_every_running_container_in_every_dns(
        etcd_hosts: Deployed) -> None:
    scenarios.rolling_restart(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_partitioned_host_is_dropped_elsewhere_serves_its_last_view_and_comes_back(
        etcd_hosts: Deployed) -> None:
    scenarios.partition(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_catalogs_equal_what_runs_after_churn_with_a_member_down(
        etcd_hosts: Deployed) -> None:
    scenarios.churn_minority_loss(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_short_partition_host_reports_current_soon_after_the_heal(etcd_hosts: Deployed) -> None:
    scenarios.short_partition(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_clock_two_seconds_ahead_within_the_stated_bound(etcd_hosts: Deployed) -> None:
    scenarios.clock_skew(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings)


def test_host_loss_removes_its_containers_everywhere_else(etcd_hosts: Deployed) -> None:
    scenarios.host_loss(etcd_hosts.cluster, etcd_hosts.work, etcd_hosts.timings, "etcd")
