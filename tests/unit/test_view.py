"""CatalogView: fail static while the backend is away, and current again as soon as it is back."""

from __future__ import annotations

import asyncio
import time

from pilotfish.catalog.interface import BackendUnavailable
from pilotfish.catalog.model import Instance
from pilotfish.catalog.view import CatalogView
from pilotfish.stack import Stack
from tests.fixtures.backends import FailingCatalog


async def test_view_keeps_its_last_snapshot_and_is_current_again_right_after_the_outage() -> None:
    catalog = FailingCatalog()
    lease = await catalog.create_lease(30)
    await catalog.register(Instance(service="web", id="web-1", address="10.0.0.1", port=80,
                                    lease=lease.id))
    view = CatalogView(catalog, wait=30.0, retry=0.2)
    await view.start()
    try:
        assert not view.stale and set(view.snapshot.instances) == {"web-1"}
        catalog.failure = BackendUnavailable("cut off (test)")
        catalog.changes.notify()  # wake the pending watch so it reads (and fails) now
        for _ in range(200):
            if view.stale:
                break
            await asyncio.sleep(0.01)
        assert view.stale, "a view whose backend fails must say so"
        assert set(view.snapshot.instances) == {"web-1"}, "a stale view must keep what it had"

        catalog.failure = None  # back, and nothing changed: no watch would return for 30 s
        back = time.monotonic()
        for _ in range(200):
            if not view.stale:
                break
            await asyncio.sleep(0.01)
        print(f"current again {time.monotonic() - back:.2f} s after the backend returned")
        assert not view.stale, "view still stale ~2 s after the backend returned"
        assert set(view.snapshot.instances) == {"web-1"}
    finally:
        await view.stop()
        await catalog.close()


async def test_only_a_component_that_needs_the_first_snapshot_holds_up_the_start() -> None:
    catalog = FailingCatalog()
    catalog.failure = BackendUnavailable("down since before the start (test)")
    stack = Stack(catalog)
    view = stack.view(warm=False)  # the status page: it can say "stale"
    stack.view(warm=False)
    started = time.monotonic()
    await view.start()
    assert time.monotonic() - started < 0.5, "a page held up the start of a process"
    await view.stop()

    stack.view()  # DNS or the LB: nothing to serve without the first snapshot
    view._wait = 0.3
    started = time.monotonic()
    await view.start()
    assert time.monotonic() - started >= 0.3, "DNS or the LB started before its first snapshot"
    await view.stop()
