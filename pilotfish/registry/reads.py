"""The read handlers of the registry API: services, one service and the whole catalog, each a
blocking query with ?index= and ?wait= (a long-poll that answers once the answer moves)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pilotfish.catalog.interface import Catalog, Snapshot
from pilotfish.catalog.model import service_name
from pilotfish.http.long_polls import slot_of, waiting
from pilotfish.http.responses import json_response
from pilotfish.registry.bodies import IndexQuery, ServicePath, WaitQuery, parse_wait
from pilotfish.registry.calls import bounded

CLIENT_GONE = 499  # nginx's "client closed request": counted, never sent


async def until_disconnected(request: Request) -> None:
    """Return once the client has gone away (its request body, if any, already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ReadHandlers:
    """The read routes over one catalog; `stopping` answers every waiting long-poll at once."""

    def __init__(self, catalog: Catalog, stopping: asyncio.Event) -> None:
        self.catalog = catalog
        self._stopping = stopping
        self._encoded_catalog: tuple[int, bytes] = (-1, b"")

    async def list_services(self) -> Response:
        snapshot = await bounded(self.catalog.snapshot())
        services = {name: len(group) for name, group in snapshot.by_service().items()}
        return json_response(
            {"index": snapshot.index, "services": services},
            headers={"X-Pilotfish-Index": str(snapshot.index)},
        )

    async def get_service(
        self, service: ServicePath, request: Request, tag: str | None = None,
        index: IndexQuery = None, wait: WaitQuery = None,
    ) -> Response:
        service = service_name(service)
        wait_seconds = parse_wait(wait)
        snapshot: Snapshot | None = await bounded(self.catalog.snapshot())
        if snapshot is not None and index is not None and index == snapshot.index:
            with waiting(slot_of(request.scope)) as early:
                snapshot = await self._block(request, snapshot, service, tag, wait_seconds,
                                             early)
        if snapshot is None:
            return Response(status_code=CLIENT_GONE)
        instances = [i.to_dict() for i in snapshot.service(service, tag)]
        return json_response(
            {"index": snapshot.index, "instances": instances},
            headers={"X-Pilotfish-Index": str(snapshot.index)},
        )

    async def get_catalog(self, request: Request, index: IndexQuery = None,
                          wait: WaitQuery = None) -> Response:
        """Every live instance; with `index`, blocks until the catalog moves past it."""
        wait_seconds = parse_wait(wait)
        snapshot: Snapshot | None = await bounded(self.catalog.snapshot())
        if snapshot is not None and index is not None and index == snapshot.index:
            with waiting(slot_of(request.scope)) as early:
                snapshot = await self._watch(request, index, wait_seconds, early)
        if snapshot is None:
            return Response(status_code=CLIENT_GONE)
        return Response(self._catalog_body(snapshot), media_type="application/json",
                        headers={"X-Pilotfish-Index": str(snapshot.index)})

    def _catalog_body(self, snapshot: Snapshot) -> bytes:
        """The /v1/catalog body, encoded once per snapshot however many followers ask."""
        if self._encoded_catalog[0] != snapshot.index:
            instances = [i.to_dict() for i in snapshot.instances.values()]
            body = json.dumps({"index": snapshot.index, "instances": instances},
                              separators=(",", ":")).encode()
            self._encoded_catalog = (snapshot.index, body)
        return self._encoded_catalog[1]

    async def _block(self, request: Request, seen: Snapshot, service: str, tag: str | None,
                     wait: float, early: asyncio.Future[None]) -> Snapshot | None:
        """Wait until this service's answer changes or `wait` elapses (a Consul-style long-poll).

        None when the client went away first.
        """
        before = seen.service(service, tag)
        deadline = time.monotonic() + wait
        snapshot: Snapshot | None = seen
        while ((remaining := deadline - time.monotonic()) > 0 and not self._stopping.is_set()
               and not early.done()):
            assert snapshot is not None
            snapshot = await self._watch(request, snapshot.index, remaining, early)
            if snapshot is None or snapshot.service(service, tag) != before:
                break
        return snapshot

    async def _watch(self, request: Request, index: int, wait: float,
                     early: asyncio.Future[None]) -> Snapshot | None:
        """catalog.watch for a long-poll, cut short when the server stops, the listener needs
        the connection (`early`), or the client leaves."""
        watch = asyncio.ensure_future(self.catalog.watch(index, wait))
        stopping = asyncio.ensure_future(self._stopping.wait())
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            pending: set[asyncio.Future[Any]] = {watch, stopping, gone, early}
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            gone.cancel()
            if not watch.done():
                watch.cancel()
        if watch in done:
            return watch.result()
        if gone in done:
            return None
        return await bounded(self.catalog.snapshot())

