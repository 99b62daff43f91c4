"""The live feed: a page's panels as server-sent events, over a response a fetch() reads.

A frame goes out when the catalog view publishes a change (within MIN_GAP) and at least every
TICK otherwise; it carries only the panels that changed. The stream holds one long-poll slot
of its listener (pilotfish.http.long_polls): when the listener needs the connection, or the
server stops, or MAX_LIFETIME passes, the stream ends and the page reconnects. The caller's
token is checked again before every frame, so a token taken away by an ACL reload stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from pilotfish.http.acl import Denied
from pilotfish.http.long_polls import slot_of, waiting
from pilotfish.ui.pages import TICK, Page, Pages

MIN_GAP = 0.1  # seconds between two frames of one stream (a burst of changes is one frame)
SEND_TIMEOUT = 10.0  # a reader that takes no frame for this long is dropped
MAX_LIFETIME = 300.0
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
           (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
           (b"x-accel-buffering", b"no")]


def event(name: str, data: Any) -> bytes:
    """One server-sent event (JSON data on one line)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _until_gone(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream(pages: Pages, page: Page, may_read: Callable[[], bool], scope: dict[str, Any],
                 receive: Any, send: Any, closing: asyncio.Event) -> None:
    """Serve one feed until the reader leaves, the slot is taken back, or the server stops.

    Raises TooManyWaiting (before answering) when the listener has no long-poll slot left.
    """
    with waiting(slot_of(scope)) as early:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        gone = asyncio.ensure_future(_until_gone(receive))
        closed = asyncio.ensure_future(closing.wait())
        changes = pages.board.changes
        sent: dict[str, str] = {}
        ends = time.monotonic() + MAX_LIFETIME
        try:
            while not (gone.done() or early.done() or closed.done()) and \
                    time.monotonic() < ends:
                generation = changes.generation
                try:
                    can_read = may_read()
                except Denied as exc:
                    await asyncio.wait_for(_body(send, event("denied", exc.body())),
                                           SEND_TIMEOUT)
                    break
                panels = await pages.panels(page, can_read)
                frame = {"panels": {k: v for k, v in panels.items() if sent.get(k) != v},
                         **pages.meta()}
                await asyncio.wait_for(_body(send, event("frame", frame)), SEND_TIMEOUT)
                sent = panels
                await asyncio.sleep(MIN_GAP)
                change = asyncio.ensure_future(changes.wait_past(generation, TICK))
                waits: set[asyncio.Future[Any]] = {change, gone, early, closed}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
        except TimeoutError:
            return  # a reader that stopped reading: the server closes the connection
        finally:
            gone.cancel()
            closed.cancel()
    with contextlib.suppress(Exception):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _body(send: Any, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})
