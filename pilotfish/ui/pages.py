"""The pages: which one a path or feed request names, its panels (rendered once per change
or tick, shared by every reader), and the HTML shell around them."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pilotfish.catalog.model import SERVICE_PATTERN
from pilotfish.ui.assets import assets
from pilotfish.ui.balancer_panel import balancer_panel
from pilotfish.ui.board import Board
from pilotfish.ui.health_panel import health_panel
from pilotfish.ui.html import esc, needs_token
from pilotfish.ui.services import service_panel, services_panel
from pilotfish.ui.sidecar_panel import sidecar_panel

TICK = 1.0  # seconds: panels are rendered again at least this often (ages, rates, TTLs)
MAX_QUERY = 100
KINDS = ("services", "service", "lb", "sidecar")
_SERVICE = re.compile(SERVICE_PATTERN)
CACHED_RENDERS = 64


class BadField(ValueError):
    """A page request with a value the UI cannot use: 400 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the UI: services, one service (`name`), lb or sidecar; `query` filters."""

    kind: str
    name: str = ""
    query: str = ""

    @property
    def path(self) -> str:
        """Where the page lives."""
        if self.kind == "services":
            return "/ui/"
        if self.kind == "service":
            return f"/ui/services/{quote(self.name)}"
        return f"/ui/{self.kind}"

    @property
    def feed(self) -> str:
        """The URL of its live feed (without the search, which the page adds)."""
        name = f"&name={quote(self.name)}" if self.name else ""
        return f"/ui/feed?page={self.kind}{name}"


def service_name(value: str) -> str:
    """A service name from a URL, or BadField."""
    if not _SERVICE.fullmatch(value):
        raise BadField("service", f"service: {value[:80]!r} is not a service name "
                                  "(a DNS label)")
    return value.lower()


def page_at(path: str) -> Page | None:
    """The page a browser path names (None: not a page)."""
    if path in ("/", "/ui", "/ui/"):
        return Page("services")
    if path in ("/ui/lb", "/ui/sidecar"):
        return Page(path[4:])
    if path.startswith("/ui/services/"):
        return Page("service", service_name(path[len("/ui/services/"):]))
    return None


def page_of(params: Mapping[str, str]) -> Page:
    """The page a feed request names: ?page=KIND[&name=SERVICE][&q=TEXT], or BadField."""
    kind = params.get("page", "services")
    if kind not in KINDS:
        raise BadField("page", f"page: must be one of {', '.join(KINDS)}")
    name = service_name(params.get("name", "")) if kind == "service" else ""
    query = params.get("q", "")
    if len(query) > MAX_QUERY or not query.isprintable():
        raise BadField("q", f"q: at most {MAX_QUERY} printable characters")
    return Page(kind, name, query.strip().lower())


class Pages:
    """Renders pages from one Board; a render is reused until the view changes or a tick ends."""

    def __init__(self, board: Board, docs: bool) -> None:
        self.board = board
        self.docs = docs  # this port serves /v1/docs (the registry API's)
        self._renders: dict[tuple[Page, bool], tuple[tuple[Any, ...], dict[str, str]]] = {}

    def has(self, page: Page) -> bool:
        """Whether this process has what the page shows."""
        if page.kind == "lb":
            return "lb" in self.board.stack.reports
        if page.kind == "sidecar":
            return "sidecar" in self.board.stack.reports
        return self.board.view is not None

    def home(self) -> Page:
        """The page `/` shows: the services where the process keeps a view, else what it has."""
        for page in (Page("services"), Page("sidecar"), Page("lb")):
            if self.has(page):
                return page
        return Page("services")

    def meta(self) -> dict[str, Any]:
        """What the feed sends beside the panels: the view's state, for the banner."""
        view = self.board.view
        return {"stale": bool(view and view.stale and view.ready.is_set()),
                "stale_since": view.stale_since if view is not None else None,
                "index": view.snapshot.index if view is not None else None,
                "at": time.time()}

    async def panels(self, page: Page, can_read: bool) -> dict[str, str]:
        """The page's panels by element id: "health" and "main"."""
        view = self.board.view
        stamp = (view.snapshot.index if view else None, view.stale if view else None,
                 int(time.monotonic() / TICK))
        cached = self._renders.get((page, can_read))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        panels = {"health": health_panel(self.board), "main": await self._main(page, can_read)}
        if len(self._renders) >= CACHED_RENDERS:
            self._renders.clear()
        self._renders[(page, can_read)] = (stamp, panels)
        return panels

    async def _main(self, page: Page, can_read: bool) -> str:
        board = self.board
        if not self.has(page):
            what = {"lb": "load balancer", "sidecar": "sidecar"}.get(page.kind, "catalog view")
            return f'<p class="empty">No {what} runs in this process.</p>'
        if not can_read:
            return needs_token({"services": "the services", "service": "this service",
                                "lb": "the load balancer's routes and pools",
                                "sidecar": "the sidecar's containers"}[page.kind])
        if page.kind == "lb":
            report = board.lb()
            return balancer_panel(report) if report is not None else ""
        if page.kind == "sidecar":
            sidecar = board.sidecar()
            return sidecar_panel(sidecar) if sidecar is not None else ""
        snapshot = board.snapshot()
        assert snapshot is not None  # has(page) said there is a view
        if page.kind == "services":
            return services_panel(snapshot, page.query)
        leases = await board.leases(i.lease for i in snapshot.service(page.name))
        return service_panel(snapshot, page.name, leases, board.domain)

    def shell(self, page: Page, panels: Mapping[str, str], notice: str = "") -> str:
        """The whole HTML page around its panels."""
        files = assets()
        links = [("services", "/ui/", "Services")] if self.board.view is not None else []
        if "lb" in self.board.stack.reports:
            links.append(("lb", "/ui/lb", "Load balancer"))
        if "sidecar" in self.board.stack.reports:
            links.append(("sidecar", "/ui/sidecar", "Sidecar"))
        current = "services" if page.kind == "service" else page.kind
        nav = "".join(f'<a href="{href}"' + (' aria-current="page"' if kind == current else "")
                      + f">{text}</a>" for kind, href, text in links)
        if self.docs:
            nav += '<a href="/v1/docs">API docs</a>'
        search = ""
        if page.kind == "services":
            search = (f'<input id="filter" type="search" placeholder="Search services and tags"'
                      f' value="{esc(page.query, MAX_QUERY)}" aria-label="Search" '
                      'autocomplete="off">')
        title = page.name or {"services": "Services", "lb": "Load balancer",
                              "sidecar": "Sidecar"}[page.kind]
        notice_html = f'<p class="notice" id="notice">{esc(notice)}</p>' if notice else ""
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · pilotfish</title>"
            f'<link rel="stylesheet" href="{files.url("ui.css")}">'
            f'<link rel="icon" href="{files.url("favicon.svg")}">'
            f'<script src="{files.url("ui.js")}" defer></script></head>'
            f'<body data-feed="{esc(page.feed, 400)}"><header>'
            '<a class="brand" href="/ui/">pilotfish</a>'
            f"<nav>{nav}</nav>"
            '<span id="connection" class="conn" role="status">not live yet</span>'
            # The form never submits (the CSP's form-action 'none'): the script reads it.
            '<details id="token"><summary>Token</summary>'
            '<form class="token-form" id="token-form" method="post">'
            '<input id="token-input" type="password" autocomplete="off" '
            'placeholder="a token with scope read" aria-label="Token">'
            '<button type="submit" id="token-use">Use</button>'
            '<button type="button" id="token-forget">Forget</button>'
            '<p id="token-state">Kept in this tab only (sessionStorage), sent as '
            "<code>Authorization: Bearer</code>.</p></form></details></header>"
            f'{notice_html}<section id="health" aria-label="Health of pilotfish">'
            f'{panels.get("health", "")}</section>{search}'
            f'<main id="main">{panels.get("main", "")}</main>'
            "<footer>pilotfish status · updates live without reloading</footer></body></html>")
