"""The pieces the cached backends share: the stored-lease record and the conflict retry."""

from __future__ import annotations

import json

import pytest

from pilotfish.catalog.backends.http import HttpCatalog
from pilotfish.catalog.backends.stored import (
    WRITE_ATTEMPTS,
    Conflict,
    StoredLease,
    decode_instance,
    retry_on_conflict,
)
from pilotfish.catalog.interface import BackendUnavailable
from pilotfish.catalog.model import InvalidField


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


def test_a_stored_instance_that_no_longer_validates_decodes_to_none() -> None:
    good = {"service": "web", "id": "a", "address": "10.0.0.1", "port": 80, "lease": "l1"}
    assert decode_instance(json.dumps(good).encode()) is not None
    assert decode_instance(good) is not None
    for bad in ({**good, "meta": {"priority": "²"}}, {**good, "tags": ["café"]},
                {**good, "port": "x"}, {"id": "a"}):
        assert decode_instance(bad) is None
        assert decode_instance(json.dumps(bad).encode()) is None
    assert decode_instance(b"[1, 2]") is None


async def test_an_http_follower_serves_the_rest_beside_an_instance_that_fails_to_decode() -> None:
    """An API of an older version may list an instance today's model refuses: the follower
    leaves that one out instead of failing every read of the catalog."""
    catalog = HttpCatalog("http://127.0.0.1:9")
    try:
        good = {"service": "web", "id": "a", "address": "10.0.0.1", "port": 80, "lease": "l1"}
        bad = {**good, "id": "b", "meta": {"priority": "²"}}
        catalog._apply({"index": 7, "instances": [good, bad]})
        snapshot = await catalog.snapshot()
        assert sorted(snapshot.instances) == ["a"]
    finally:
        await catalog.close()
