"""The status UI against hostile data and clients: catalog values written to run script in an
operator's browser are shown as text, and a flood of live feeds holds no more of the port
than its long-poll share (newcomers get 503 with Retry-After; plain pages still load)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.model import Instance
from pilotfish.config import HostPort
from pilotfish.http.limits import HttpLimits
from pilotfish.http.server import HttpServer
from pilotfish.stack import Stack
from pilotfish.ui.app import UiApp

CAP = 20  # connections; feeds (long-polls) may hold half


@asynccontextmanager
async def running_ui(limits: HttpLimits | None = None) -> AsyncIterator[tuple[str, Stack]]:
    """The status UI alone on a loopback port over an in-memory catalog; its base URL."""
    stack = Stack(MemoryCatalog())
    view = stack.view()
    await view.start()
    ui = UiApp(stack, None, None, view=view)
    server = HttpServer(ui, HostPort("127.0.0.1", 0), what="ui", before_stop=ui.close,
                        limits=limits)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.address.port}", stack
    finally:
        await server.stop()
        await view.stop()
        await stack.catalog.close()


SCRIPTS = ("<script>alert(1)</script>", "<img/src=x/onerror=alert(2)>",
           '"><svg/onload=alert(3)>')


async def test_catalog_values_are_shown_as_text_never_as_markup() -> None:
    async with running_ui() as (base, stack):
        catalog = stack.catalog
        lease = await catalog.create_lease(60, owner=SCRIPTS[0])
        await catalog.register(Instance(
            service="evil", id="evil-1", address="127.0.0.1", port=80, lease=lease.id,
            tags=(SCRIPTS[1], "ok"), meta={"note": SCRIPTS[2], "x": SCRIPTS[0]}))
        shown = asyncio.Event()
        stack.view().subscribe(lambda snapshot: shown.set() if snapshot.get("evil-1") else None)
        await asyncio.wait_for(shown.wait(), 5)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            listing = (await client.get("/")).text
            page = (await client.get("/ui/services/evil")).text
            async with client.stream("GET", "/ui/feed?page=service&name=evil") as feed:
                async for line in feed.aiter_lines():
                    if line.startswith("data:"):
                        panels = json.loads(line[5:])["panels"]
                        break
    for html in (listing, page, panels["main"]):
        assert not re.search(r"<(script|img|svg)\b[^>]*(alert|onerror|onload)", html), html
        assert "onerror=alert(2)" not in html.replace("&lt;img/src=x/onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the owner, as text
    assert "&lt;img/src=x/onerror=alert(2)&gt;" in page  # the tag, as text
    assert page.count("<script") == 1  # ours: ui.js, loaded from the package


async def _open_feed(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /ui/feed HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_a_flood_of_feeds_holds_only_the_long_poll_share() -> None:
    async with running_ui(HttpLimits(max_connections=CAP)) as (base, _):
        opened = [await _open_feed(base) for _ in range(CAP // 2 + 3)]
        try:
            statuses = [head.split(b" ", 2)[1] for _, _, head in opened]
            assert statuses.count(b"200") == CAP // 2, statuses
            assert statuses.count(b"503") == 3, statuses
            refused = next(head for _, _, head in opened if b" 503 " in head)
            assert b"retry-after: 1" in refused.lower()
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                assert (await client.get("/")).status_code == 200  # pages still load
        finally:
            for _, writer, _ in opened:
                writer.close()
