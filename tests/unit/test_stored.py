"""The pieces the cached backends share: the stored-lease record and the conflict retry."""

from __future__ import annotations

import json

import pytest

from pilotfish.registry.backends.stored import (
    WRITE_ATTEMPTS,
    Conflict,
    StoredLease,
    retry_on_conflict,
)
from pilotfish.registry.catalog import BackendUnavailable
from pilotfish.registry.model import InvalidField


def test_a_stored_lease_round_trips_through_its_json() -> None:
    record = StoredLease("ab12", 30, "sidecar-1", 1_700_000_000.5, version=3, revision=9)
    again = StoredLease.decode("ab12", record.encode(), version=3, revision=9)
    assert again == record
    assert StoredLease.decode("ab12", record.encode(compact=True), 3, 9) == record
    assert json.loads(record.encode(compact=True)) == {
        "expires_at": 1_700_000_000.5, "owner": "sidecar-1", "ttl": 30}


def test_without_expiry_only_ttl_and_owner_are_stored() -> None:
    record = StoredLease("ab12", 30, "o", 123.0)
    assert json.loads(record.encode(expiry=False)) == {"ttl": 30, "owner": "o"}
    assert StoredLease.decode("ab12", record.encode(expiry=False), expiry=False).expires_at == 0


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b'{"ttl": 1, "expires_at": 5}',
                                 b'{"ttl": 30}', b'{"ttl": "x", "expires_at": 5}'])
def test_a_record_that_is_not_a_lease_parses_to_none(raw: bytes) -> None:
    assert StoredLease.parse("ab12", raw) is None


def test_value_and_liveness_follow_the_wall_clock_expiry() -> None:
    record = StoredLease("ab12", 30, "o", 100.0)
    assert record.live(99.9) and not record.live(100.0)
    lease = record.value()
    assert (lease.id, lease.ttl, lease.owner, lease.expires_at) == ("ab12", 30, "o", 100.0)
    with pytest.raises(InvalidField):
        StoredLease("not an id", 30, "o", 1.0).value()


async def test_retry_on_conflict_retries_until_an_attempt_goes_through() -> None:
    seen: list[int] = []

    async def attempt(number: int) -> str:
        seen.append(number)
        if number < 2:
            raise Conflict("someone else wrote")
        return "done"

    assert await retry_on_conflict(attempt, lambda: BackendUnavailable("gave up")) == "done"
    assert seen == [0, 1, 2]


async def test_retry_on_conflict_gives_up_after_write_attempts() -> None:
    seen: list[int] = []

    async def attempt(number: int) -> str:
        seen.append(number)
        raise Conflict("always")

    with pytest.raises(BackendUnavailable, match="gave up"):
        await retry_on_conflict(attempt, lambda: BackendUnavailable("gave up"))
    assert seen == list(range(WRITE_ATTEMPTS))


async def test_other_errors_are_not_retried() -> None:
    seen: list[int] = []

    async def attempt(number: int) -> str:
        seen.append(number)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await retry_on_conflict(attempt, lambda: BackendUnavailable("gave up"))
    assert seen == [0]
