"""What the registry does with checks on its own: ttl reports, carrying them over a registrar's
re-put, overdue reports, and when deregister_after is due."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pilotfish.catalog.checks import (
    TTL_EXPIRED,
    deregister_due,
    expire_overdue,
    merge_reports,
    next_deadline,
    report,
)
from pilotfish.catalog.model import Check, Instance, InvalidField

NOW = 1_800_000_000.0
BEAT = Check(id="beat", name="beat", kind="ttl", ttl=10.0)
TCP = Check(id="tcp", name="tcp", kind="tcp", status="passing")


def instance(*checks: Check) -> Instance:
    return Instance(service="web", id="w1", address="127.0.0.1", port=80, lease="l",
                    checks=checks)


def test_a_report_sets_status_output_change_time_and_deadline() -> None:
    reported = report(instance(TCP, BEAT), "beat", "passing", "ok", NOW)
    beat = reported.checks[1]
    assert (beat.status, beat.output, beat.changed, beat.expires_at) == (
        "passing", "ok", NOW, NOW + 10)
    again = report(reported, "beat", "passing", "still ok", NOW + 5).checks[1]
    assert (again.changed, again.expires_at) == (NOW, NOW + 15)  # no status change
    assert report(reported, "beat", "warning", "", NOW + 6).checks[1].changed == NOW + 6


def test_only_ttl_checks_take_reports() -> None:
    with pytest.raises(InvalidField):
        report(instance(TCP), "tcp", "passing", "", NOW)
    with pytest.raises(KeyError):
        report(instance(TCP), "nope", "passing", "", NOW)


def test_a_reput_without_report_keeps_the_stored_one_and_nothing_else() -> None:
    stored = report(instance(BEAT, TCP), "beat", "warning", "slow", NOW)
    changed_tcp = replace(TCP, status="critical")
    merged = merge_reports(stored, instance(BEAT, changed_tcp))
    assert merged.checks == (stored.checks[0], changed_tcp)
    fresh = replace(BEAT, status="passing", changed=NOW + 1, expires_at=NOW + 11)
    assert merge_reports(stored, instance(fresh)).checks == (fresh,)  # a report wins
    assert merge_reports(None, instance(BEAT)) == instance(BEAT)


def test_an_overdue_ttl_check_is_written_critical_once() -> None:
    reported = report(instance(BEAT), "beat", "passing", "ok", NOW)
    assert next_deadline(reported) == NOW + 10
    assert expire_overdue(reported, NOW + 9) is None
    expired = expire_overdue(reported, NOW + 11)
    assert expired is not None
    assert (expired.checks[0].status, expired.checks[0].output) == ("critical", TTL_EXPIRED)
    assert expire_overdue(expired, NOW + 12) is None and next_deadline(expired) is None


def test_deregister_after_counts_from_the_status_change_or_the_missed_deadline() -> None:
    dead = replace(TCP, status="critical", changed=NOW, deregister_after=30.0)
    assert deregister_due(instance(dead), NOW + 1, NOW + 1) == NOW + 30
    unknown_since = replace(dead, changed=0.0)
    assert deregister_due(instance(unknown_since), NOW + 1, NOW - 5) == NOW + 25
    beat = report(instance(replace(BEAT, deregister_after=60.0)), "beat", "passing", "", NOW)
    assert deregister_due(beat, NOW + 5, NOW) is None
    assert deregister_due(beat, NOW + 11, NOW) == NOW + 70
