"""Catalog calls made for an HTTP request, bounded in time: a silent backend is a 503, never a
request that hangs (the registry API and the Consul-compatible API alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from pilotfish.catalog.interface import BackendUnavailable

T = TypeVar("T")

BACKEND_TIMEOUT = 5.0


async def bounded(call: Awaitable[T]) -> T:
    """The call's result, or BackendUnavailable (answered 503) after BACKEND_TIMEOUT seconds."""
    try:
        return await asyncio.wait_for(call, BACKEND_TIMEOUT)
    except TimeoutError:
        raise BackendUnavailable(f"no answer within {BACKEND_TIMEOUT:g}s") from None
