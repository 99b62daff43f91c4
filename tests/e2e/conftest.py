"""What the e2e API tests share: one `pilotfish up` per test module and a client of its API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish


@pytest.fixture(scope="module")
def server() -> Iterator[PilotfishProcess]:
    """`pilotfish up` with its API and DNS on ephemeral ports, for the module's tests."""
    running = start_pilotfish("up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0")
    try:
        yield running
    finally:
        running.stop()
    assert not running.crashes(), running.crashes()


@pytest.fixture
def api(server: PilotfishProcess) -> Iterator[httpx.Client]:
    """A plain HTTP client of the module's registry API."""
    with httpx.Client(base_url=server.api, timeout=10) as client:
        yield client
