"""The status UI as an ASGI app in front of a port's own app: it answers /, /ui/... (and
/v1/docs on the registry API's port) and hands every other path to the app behind it."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from pilotfish.catalog.view import CatalogView
from pilotfish.http.acl import AccessPolicy, Denied, presented_token
from pilotfish.http.errors import ApiError
from pilotfish.http.long_polls import RETRY_AFTER, TooManyWaiting
from pilotfish.http.status import ASGIApp
from pilotfish.stack import Stack
from pilotfish.ui import feed
from pilotfish.ui.assets import assets
from pilotfish.ui.board import Board
from pilotfish.ui.docs import docs_page
from pilotfish.ui.pages import BadField, Page, Pages, page_at, page_of

log = logging.getLogger(__name__)

READS = ("GET", "HEAD")
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Swagger UI sets style attributes in the markup it builds, and draws icons as data: images.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
NO_STORE = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]


class UiApp:
    """Serves the status UI on one port; `app` (the port's own API) gets every other path.

    `access`: the ACL whose `read` scope decides what the pages show (the port's, as its API
    applies it); `view`: the catalog view to show (None: the process's, if it keeps one);
    `docs`: serve the offline OpenAPI page at /v1/docs.
    """

    def __init__(self, stack: Stack, app: ASGIApp | None, access: AccessPolicy | None,
                 view: CatalogView | None = None, docs: bool = False) -> None:
        self.app = app
        self.access = access
        self.pages = Pages(Board(stack, view), docs)
        self.closing = asyncio.Event()

    def close(self) -> None:
        """End every live feed now (the server is stopping)."""
        self.closing.set()

    def _ours(self, path: str) -> bool:
        return path in ("/", "/ui") or path.startswith("/ui/") or (
            self.pages.docs and path == "/v1/docs")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._ours(scope.get("path", "")):
            if self.app is not None:
                await self.app(scope, receive, send)
            elif scope["type"] == "http":
                await ApiError(404, "not_found", "not found").send(send)
            return
        if scope["method"] not in READS:
            await ApiError(405, "method_not_allowed", f"{scope['method'][:32]} is not allowed "
                           "here; use GET, HEAD", headers={"Allow": "GET, HEAD"}).send(send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._route(scope, receive, tracked)
        except BadField as exc:
            await ApiError(400, "invalid", str(exc), exc.field).send(send)
        except ApiError as exc:  # Denied too: 401 and 403
            await exc.send(send)
        except TooManyWaiting as exc:  # its slot goes to someone else: close after
            await ApiError(503, "unavailable", str(exc), headers={
                "Retry-After": str(RETRY_AFTER), "Connection": "close"}).send(send)
        except Exception as exc:  # a bug: one bounded line in the log, never a traceback
            log.error("ui: %s %s failed: %s", scope["method"][:16], scope["path"][:200],
                      repr(exc)[:300])
            if not started:
                await ApiError(500, "internal", "internal error").send(send)

    def may_read(self, scope: dict[str, Any]) -> bool:
        """Whether this request may see the catalog, as the port's API decides a GET: Denied
        (401/403) for a token it refuses; False for no token where reads need one."""
        access = self.access
        if access is None or access.acl is None:
            return True
        secret = presented_token(scope)
        if not secret:
            return access.acl.default_read
        access.authenticate(secret, write=False)
        return True

    async def _route(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        head = scope["method"] == "HEAD"
        if path.startswith("/ui/static/"):
            await self._asset(path[len("/ui/static/"):], scope, send, head)
        elif path == "/v1/docs":
            await self._html(send, 200, docs_page(), head, DOCS_CSP)
        elif path == "/ui/feed":
            page = page_of(dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))))
            self.may_read(scope)  # a refused token: 401/403 now, before the stream starts
            if head:
                await _send(send, 200, b"", feed.HEADERS[0][1], True, feed.HEADERS[1:])
                return
            await feed.stream(self.pages, page, lambda: self.may_read(scope), scope, receive,
                              send, self.closing)
        elif path == "/ui/status.json":
            await self._status(scope, send, head)
        else:
            shown = page_at(path)
            if shown == Page("services") and path in ("/", "/ui", "/ui/"):
                shown = self.pages.home()
            if shown is None:
                raise ApiError(404, "not_found", f"no such page: {path[:200]}")
                return
            await self._page(shown, scope, send, head)

    async def _page(self, page: Page, scope: dict[str, Any], send: Any, head: bool) -> None:
        notice = ""
        try:
            can_read = self.may_read(scope)
        except Denied as exc:
            can_read, notice = False, f"Token refused: {exc.message}"
        panels = await self.pages.panels(page, can_read)
        status = 200 if self.pages.has(page) else 404
        await self._html(send, status, self.pages.shell(page, panels, notice), head, PAGE_CSP)

    async def _status(self, scope: dict[str, Any], send: Any, head: bool) -> None:
        """The facts behind the pages as JSON; catalog-naming parts only for readers."""
        can_read = self.may_read(scope)
        board = self.pages.board
        body: dict[str, Any] = {**self.pages.meta(), "can_read": can_read}
        dns = board.dns()
        if dns is not None:
            body["dns"] = dns
        if can_read:
            snapshot = board.snapshot()
            if snapshot is not None:
                body["services"] = {name: len(group)
                                    for name, group in snapshot.by_service().items()}
            for name in ("lb", "sidecar"):
                report = board.stack.reports.get(name)
                if report is not None:
                    body[name] = report()
        await _send(send, 200, json.dumps(body).encode(), b"application/json", head,
                    NO_STORE[:2])

    async def _html(self, send: Any, status: int, html: str, head: bool, csp: str) -> None:
        await _send(send, status, html.encode(), b"text/html; charset=utf-8", head,
                    [(b"content-security-policy", csp.encode()), *NO_STORE])

    async def _asset(self, name: str, scope: dict[str, Any], send: Any, head: bool) -> None:
        asset = assets().get(name)
        if asset is None:
            raise ApiError(404, "not_found", f"no such file: {name[:200]}")
        headers: dict[bytes, bytes] = dict(scope["headers"])
        common = [(b"etag", asset.etag.encode()), (b"cache-control", b"public, max-age=86400"),
                  (b"x-content-type-options", b"nosniff"), (b"vary", b"accept-encoding")]
        if headers.get(b"if-none-match", b"").decode("latin-1") == asset.etag:
            await send({"type": "http.response.start", "status": 304, "headers": common})
            await send({"type": "http.response.body", "body": b""})
            return
        body = asset.body
        if asset.gzipped is not None and b"gzip" in headers.get(b"accept-encoding", b""):
            body = asset.gzipped
            common.append((b"content-encoding", b"gzip"))
        await _send(send, 200, body, asset.content_type.encode(), head, common)


async def _send(send: Any, status: int, body: bytes, content_type: bytes, head: bool,
                headers: list[tuple[bytes, bytes]]) -> None:
    """A whole answer; HEAD gets the same head (Content-Length included) without the body."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": b"" if head else body})
