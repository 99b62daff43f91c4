"""What happens to an instance's checks in the registry: ttl reports (and keeping them when a
registrar puts the instance again), overdue ttl checks turning critical, and deregister_after."""

from __future__ import annotations

from dataclasses import replace

from pilotfish.catalog.model import Check, Health, Instance, InvalidField

TTL_EXPIRED = "TTL expired"


def unreported(check: Check) -> bool:
    """A ttl check as a registrar declares it: no report has ever reached this copy."""
    return check.kind == "ttl" and check.changed == 0


def merge_reports(old: Instance | None, new: Instance) -> Instance:
    """`new`, its unreported ttl checks carrying the report stored in `old` (same check id, a
    ttl check there too): a registrar re-putting an instance after an outage or a lost lease
    must not reset what the app reported. Everything else in `new` wins."""
    if old is None:
        return new
    merged = merge_checks(old.checks, new.checks)
    return new if merged is new.checks else replace(new, checks=merged)


def merge_checks(old: tuple[Check, ...], new: tuple[Check, ...]) -> tuple[Check, ...]:
    """The checks of merge_reports (`new` itself when nothing is carried over)."""
    if not any(unreported(c) for c in new):
        return new
    stored = {c.id: c for c in old if c.kind == "ttl" and c.changed}
    if not any(unreported(c) and c.id in stored for c in new):
        return new
    return tuple(
        replace(c, status=s.status, output=s.output, changed=s.changed, expires_at=s.expires_at)
        if unreported(c) and (s := stored.get(c.id)) is not None else c
        for c in new)


def with_check(instance: Instance, check: Check) -> Instance:
    """`instance` with `check` in place of its check of the same id (or added)."""
    return replace(instance, checks=(*(c for c in instance.checks if c.id != check.id), check))


def report(instance: Instance, check_id: str, status: Health, output: str,
           now: float) -> Instance:
    """`instance` with a report applied to its ttl check `check_id`: the status and output,
    `changed` when the status moves (or on the first report), the next deadline now + ttl.
    InvalidField when there is no such check, or it is not a ttl check (it reports itself)."""
    for n, check in enumerate(instance.checks):
        if check.id != check_id:
            continue
        if check.kind != "ttl":
            raise InvalidField("check", f"{check_id!r} is a {check.kind} check: only ttl "
                                        "checks take reports")
        changed = check.changed if check.changed and check.status == status else now
        expires_at = now + check.ttl if check.ttl else 0.0
        updated = replace(check, status=status, output=output, changed=changed,
                          expires_at=expires_at)
        return replace(instance, checks=(*instance.checks[:n], updated,
                                         *instance.checks[n + 1:]))
    raise KeyError(check_id)


def expire_overdue(instance: Instance, now: float) -> Instance | None:
    """`instance` with its overdue ttl checks written critical "TTL expired" (None: none is)."""
    if not any(_overdue(c, now) for c in instance.checks):
        return None
    return replace(instance, checks=tuple(
        replace(c, status="critical", output=TTL_EXPIRED, changed=c.expires_at)
        if _overdue(c, now) else c for c in instance.checks))


def _overdue(check: Check, now: float) -> bool:
    return check.kind == "ttl" and check.status != "critical" and 0 < check.expires_at < now


def critical_since(check: Check, now: float, first_seen: float) -> float | None:
    """Since when the check has been critical as of `now` (None: it is not); `first_seen`
    stands in for a stored critical status that says nothing of when it began."""
    if check.status_at(now) != "critical":
        return None
    if check.status != "critical":  # an overdue ttl check: critical since its deadline
        return check.expires_at
    return check.changed or first_seen


def deregister_due(instance: Instance, now: float, first_seen: float) -> float | None:
    """When the instance is to be deregistered for a check critical longer than its
    deregister_after (the earliest such moment; None: no check asks for it now)."""
    due: float | None = None
    for check in instance.checks:
        if not check.deregister_after:
            continue
        since = critical_since(check, now, first_seen)
        if since is not None:
            moment = since + check.deregister_after
            due = moment if due is None else min(due, moment)
    return due


def next_deadline(instance: Instance) -> float | None:
    """The next moment a ttl check of the instance falls overdue (None: none will)."""
    deadlines = [c.expires_at for c in instance.checks
                 if c.kind == "ttl" and c.status != "critical" and c.expires_at]
    return min(deadlines) if deadlines else None
