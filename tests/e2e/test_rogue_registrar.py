"""The rogue-container case on every backend: a registrar killed with SIGKILL leaves nothing behind.

A separate registrar process registers instances on a TTL 2 lease and keeps it alive;
after SIGKILL nobody renews the lease, and every read must stop serving its
instances within TTL + 1 s of the kill (DESIGN.md guarantee 1).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.registry import Catalog, open_catalog
from tests.fixtures.process import start_pilotfish
from tests.watching import wait_until

TTL = 2
GRACE = 1.0
COUNT = 3
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture
def shared_url(backend_url: str) -> Iterator[str]:
    """A catalog URL two processes can share: memory:// lives in one, so serve it through an API."""
    if not backend_url.startswith("memory:"):
        yield backend_url
        return
    with start_pilotfish("registry", "--registry", backend_url, "--api", "127.0.0.1:0") as api:
        yield api.api


async def test_killed_registrars_instances_vanish_within_ttl(
    backend_url: str, shared_url: str, unique: str
) -> None:
    service = f"rogue-{unique}"
    registrar = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.registrar", shared_url, service, str(COUNT),
        "--ttl", str(TTL), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    catalog: Catalog | None = None
    try:
        assert registrar.stdout is not None
        first = (await asyncio.wait_for(registrar.stdout.readline(), 30)).decode()
        if not first.startswith("READY"):
            rest = await asyncio.wait_for(registrar.stdout.read(), 5)
            pytest.fail(f"registrar did not start: {first}{rest.decode()}")
        catalog = await open_catalog(shared_url)
        await wait_until(catalog, lambda s: len(s.service(service)) == COUNT, 5)

        # Kept alive by the registrar, the instances outlive their TTL...
        await asyncio.sleep(TTL + 0.5)
        assert len((await catalog.snapshot()).service(service)) == COUNT
        assert registrar.returncode is None

        # ...and once it is killed, they are gone within TTL + 1 s.
        registrar.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.wait_for(registrar.wait(), 5)
        await wait_until(catalog, lambda s: not s.service(service), TTL + GRACE + 2)
        vanished = time.monotonic() - killed
        print(f"{backend_url.split(':')[0]}: gone {vanished:.2f}s after SIGKILL (TTL {TTL}s)")
        assert vanished <= TTL + GRACE, f"served {vanished:.2f}s after the kill"
    finally:
        if registrar.returncode is None:
            registrar.kill()
            await asyncio.wait_for(registrar.wait(), 5)
        if catalog is not None:
            await catalog.close()
