"""Consul blocking queries: one X-Consul-Index per answer, moving only when that answer changes.

Consul clients send back the X-Consul-Index of their last answer as `?index=` and expect the
request to hang until *that answer* differs (or `wait` passes). pilotfish's catalog index moves
on every change anywhere, so each answer (endpoint + the parameters that shape it) keeps its own
index: the catalog index at which its encoded body was last seen to change. A watcher of service
`web` is not woken when `db` changes, and an answer's index never goes backwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from pilotfish.catalog.interface import Catalog, Snapshot
from pilotfish.http.long_polls import WaitSlot, waiting

MAX_ANSWERS = 4096
"""Answers whose index is remembered; one forgotten gets a fresh (higher) index: a spurious
wake-up for its watchers, never a missed change."""


class AnswerIndexes:
    """The index of each distinct answer, keyed by what the answer is a function of."""

    def __init__(self, limit: int = MAX_ANSWERS) -> None:
        self.limit = limit
        self._answers: OrderedDict[Hashable, tuple[bytes, int]] = OrderedDict()

    def index_of(self, key: Hashable, body: bytes, catalog_index: int) -> int:
        """The answer's index: unchanged while its body is, else the catalog index now."""
        digest = hashlib.blake2b(body, digest_size=16).digest()
        known = self._answers.get(key)
        if known is not None and known[0] == digest:
            self._answers.move_to_end(key)
            return known[1]
        index = max(catalog_index, 1) if known is None else max(catalog_index, known[1] + 1)
        self._answers[key] = (digest, index)
        self._answers.move_to_end(key)
        while len(self._answers) > self.limit:
            self._answers.popitem(last=False)
        return index


def jittered(wait: float) -> float:
    """The wait Consul applies: the asked one plus up to 1/16 more, so watchers spread out."""
    return wait + random.uniform(0, wait / 16)


Render = Callable[[Snapshot], Awaitable[bytes]]


class Blocker:
    """Answers a query now, or (with ?index= equal to its answer's index) once it changes."""

    def __init__(self, catalog: Catalog, stopping: asyncio.Event,
                 call: Callable[[Awaitable[Snapshot]], Awaitable[Snapshot]]) -> None:
        self.catalog = catalog
        self.stopping = stopping
        self.answers = AnswerIndexes()
        self._call = call  # a catalog call with the API's timeout

    async def answer(self, key: Hashable, render: Render, client_index: int | None,
                     wait: float, slot: WaitSlot | None = None) -> tuple[bytes, int]:
        """(body, index): at once unless client_index is this answer's current index.

        While it waits it holds `slot` (TooManyWaiting when the listener has none left), and
        it answers at once when the listener takes the slot back."""
        deadline = time.monotonic() + jittered(wait)
        snapshot = await self._call(self.catalog.snapshot())
        body = await render(snapshot)
        index = self.answers.index_of(key, body, snapshot.index)
        if client_index != index or self.stopping.is_set():
            return body, index
        with waiting(slot) as early:
            while client_index == index and not self.stopping.is_set() and not early.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                snapshot = await self._next(snapshot.index, remaining, early)
                body = await render(snapshot)
                index = self.answers.index_of(key, body, snapshot.index)
        return body, index

    async def _next(self, index: int, wait: float, early: asyncio.Future[None]) -> Snapshot:
        """The catalog past `index`, or as it is when `wait` ends, the server stops or the
        listener needs the connection."""
        watch = asyncio.ensure_future(self.catalog.watch(index, wait))
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            pending: set[asyncio.Future[Any]] = {watch, stopping, early}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            finished = watch.done()
            if not finished:
                watch.cancel()  # also when the client went away and this request is cancelled
        if not finished:
            return await self._call(self.catalog.snapshot())
        return watch.result()
