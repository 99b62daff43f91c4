"""Small helpers the catalog tests share: building instances and waiting on what catalogs show."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from pilotfish.registry import BackendUnavailable, Catalog, Instance, Snapshot


def instance(service: str, instance_id: str, port: int, lease: str = "unset") -> Instance:
    """An instance on 127.0.0.1 (lease "unset": a Registrar fills in its own)."""
    return Instance(service=service, id=instance_id, address="127.0.0.1", port=port, lease=lease)


def ids(snapshot: Snapshot, service: str) -> set[str]:
    """The ids of the service's instances in the snapshot."""
    return {i.id for i in snapshot.service(service)}


async def wait_until(catalog: Catalog, predicate: Callable[[Snapshot], object],
                     timeout: float) -> Snapshot:
    """Follow the catalog's watch until predicate(snapshot) holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    snapshot = await catalog.snapshot()
    while not predicate(snapshot):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"condition not reached within {timeout}s; last {snapshot}"
        snapshot = await catalog.watch(snapshot.index, remaining)
    return snapshot


async def wait_until_back(catalog: Catalog, predicate: Callable[[Snapshot], object],
                          timeout: float) -> Snapshot:
    """Like wait_until, for a catalog whose backend is coming back: BackendUnavailable
    counts as "not yet" until the timeout."""
    deadline = time.monotonic() + timeout
    snapshot: Snapshot | None = None
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"condition not reached within {timeout}s; last {snapshot}"
        try:
            if snapshot is None:
                snapshot = await catalog.snapshot()
            else:
                snapshot = await catalog.watch(snapshot.index, min(remaining, 1.0))
        except BackendUnavailable:
            snapshot = None
            await asyncio.sleep(0.05)
            continue
        if predicate(snapshot):
            return snapshot


async def wait_until_ids(catalog: Catalog, service: str, expected: set[str],
                         timeout: float) -> Snapshot:
    """Follow the catalog until the service has exactly the expected instance ids."""
    return await wait_until(catalog, lambda s: ids(s, service) == expected, timeout)


async def eventually(check: Callable[[], object | Awaitable[object]], timeout: float,
                     what: str) -> None:
    """Poll a check (plain or async) until it is true; fail naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.05)
