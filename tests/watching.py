"""Moved to tests/fixtures/watching.py; kept so tests written against the old path still run."""

from tests.fixtures.watching import (
    eventually,
    ids,
    instance,
    wait_until,
    wait_until_back,
    wait_until_ids,
)

__all__ = ["eventually", "ids", "instance", "wait_until", "wait_until_back", "wait_until_ids"]
