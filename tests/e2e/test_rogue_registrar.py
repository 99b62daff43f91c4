"""The rogue-container case on every backend: a registrar killed with SIGKILL leaves nothing behind.

A `pilotfish register` process registers instances on a TTL 2 lease and keeps it alive;
after SIGKILL nobody renews the lease, and every read must stop serving its
instances within TTL + 1 s of the kill (docs/architecture.md guarantee 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator

import pytest

from pilotfish.catalog import open_catalog
from tests.fixtures.process import StartPilotfish, start_pilotfish
from tests.fixtures.watching import wait_until

TTL = 2
GRACE = 1.0
COUNT = 3

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
    backend_url: str, shared_url: str, unique: str, pilotfish: StartPilotfish
) -> None:
    service = f"rogue-{unique}"
    specs = [f"{service}/{service}-{n}=127.0.0.1:{20000 + n}" for n in range(COUNT)]
    registrar = pilotfish("register", "--registry", shared_url, "--ttl", str(TTL), *specs,
                          expect=())
    async with contextlib.AsyncExitStack() as stack:
        catalog = await open_catalog(shared_url)
        stack.push_async_callback(catalog.close)
        await wait_until(catalog, lambda s: len(s.service(service)) == COUNT, 30)

        # Kept alive by the registrar, the instances outlive their TTL...
        await asyncio.sleep(TTL + 0.5)
        assert len((await catalog.snapshot()).service(service)) == COUNT
        assert registrar.process.poll() is None

        # ...and once it is killed, they are gone within TTL + 1 s.
        killed = time.monotonic()
        registrar.stop(signal.SIGKILL)
        await wait_until(catalog, lambda s: not s.service(service), TTL + GRACE + 2)
        vanished = time.monotonic() - killed
        print(f"{backend_url.split(':')[0]}: gone {vanished:.2f}s after SIGKILL (TTL {TTL}s)")
        assert vanished <= TTL + GRACE, f"served {vanished:.2f}s after the kill"
