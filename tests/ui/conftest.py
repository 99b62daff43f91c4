"""A real browser for the status UI's tests: Debian's Chromium, headless, driven by Playwright
(which is never allowed to download a browser of its own), one per test module."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE_TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the module."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) with every request URL it made in `.urls`."""
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    urls: list[str] = []
    tab.on("request", lambda request: urls.append(request.url))
    tab.urls = urls  # type: ignore[attr-defined]
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests leave their screenshots."""
    return tmp_path_factory.mktemp("ui-screenshots")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def web_backend() -> Iterator[int]:
    """A real HTTP server on loopback (its port) for the LB to balance to."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def register(api: str, service: str, instance: str, port: int, token: str | None = None,
             **body: object) -> None:
    """Register an instance with a lease of its own through the API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.put(f"{api}/v1/services/{service}/instances/{instance}", headers=headers,
                         json={"address": "127.0.0.1", "port": port, "ttl": 60, **body},
                         timeout=10)
    assert response.status_code in (200, 201), response.text


def deregister(api: str, service: str, instance: str, token: str | None = None) -> None:
    """Deregister an instance through the API."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.delete(f"{api}/v1/services/{service}/instances/{instance}",
                            headers=headers, timeout=10)
    assert response.status_code == 204, response.text
