"""The status UI over plain HTTP: headers, assets, refusals that name the field, the live feed
and the ACL, against a real `pilotfish registry` process."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.acl import CLOSED_ACL, DEPLOYER, OPS, VIEWER
from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.ui.conftest import register

STARTUP = 60.0


@pytest.fixture(scope="module")
def api() -> Iterator[PilotfishProcess]:
    """An open registry (no ACL)."""
    with start_pilotfish("registry", "--api", "127.0.0.1:0", timeout=STARTUP) as process:
        yield process
    assert not process.crashes(), process.crashes()


@pytest.fixture
def acl_api(tmp_path: Path) -> Iterator[tuple[PilotfishProcess, Path]]:
    """A registry whose reads need a token, and its ACL file."""
    acl = tmp_path / "acl.toml"
    acl.write_text(CLOSED_ACL)
    with start_pilotfish("registry", "--api", "127.0.0.1:0", "--acl", str(acl),
                         timeout=STARTUP) as process:
        register(process.api, "hidden-svc", "h-1", 7000, token=OPS)
        yield process, acl
    assert not process.crashes(), process.crashes()


def frames(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a feed as they arrive."""
    name, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield name, json.loads(data)
            name, data = "message", ""


def test_pages_have_a_strict_policy_and_are_not_cached(api: PilotfishProcess) -> None:
    page = httpx.get(api.api + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
    assert "form-action 'none'" in policy  # the token form can never submit into a URL
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    head = httpx.head(api.api + "/", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == page.headers["content-length"]
    for path in ("/ui", "/ui/"):
        assert "Services" in httpx.get(api.api + path, timeout=10).text
    docs = httpx.get(api.api + "/v1/docs", timeout=10)  # offline: nothing from elsewhere
    assert docs.status_code == 200 and "SwaggerUIBundle" not in docs.text
    assert not re.search(r"(src|href)=\"(https?:)?//", docs.text), docs.text
    feed = httpx.head(api.api + "/ui/feed", timeout=5)  # answered, not streamed forever
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("text/event")


def test_assets_are_small_compressed_and_cached(api: PilotfishProcess) -> None:
    page = httpx.get(api.api + "/", timeout=10).text
    own = 0
    for name in ("ui.js", "ui.css"):
        url = page.split(f"/ui/static/{name}?v=")[0].rsplit('"', 1)[1] + f"/ui/static/{name}"
        response = httpx.get(api.api + url, headers={"accept-encoding": "gzip"}, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        own += len(response.content)
        again = httpx.get(api.api + url, headers={"if-none-match": response.headers["etag"]},
                          timeout=10)
        assert again.status_code == 304 and again.content == b""
    assert own < 20_000  # the whole UI: a few kilobytes of CSS and JS, no framework
    swagger = httpx.get(api.api + "/ui/static/swagger/swagger-ui-bundle.js", timeout=10)
    assert swagger.status_code == 200 and b"SwaggerUIBundle" in swagger.content
    missing = httpx.get(api.api + "/ui/static/../../etc/passwd", timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_writes_to_the_ui_get_405_naming_what_is_allowed(api: PilotfishProcess,
                                                         method: str) -> None:
    for path in ("/", "/ui/feed", "/ui/services/web"):
        response = httpx.request(method, api.api + path, timeout=10)
        assert response.status_code == 405, (path, response.text)
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize(("path", "field"), [
    ("/ui/feed?page=nope", "page"),
    ("/ui/feed?page=service&name=not_a_label", "service"),
    ("/ui/feed?page=services&q=" + "x" * 101, "q"),
    ("/ui/feed?page=services&q=%00", "q"),
    ("/ui/services/Not_A_Label", "service"),
])
def test_bad_page_requests_name_the_field(api: PilotfishProcess, path: str,
                                          field: str) -> None:
    response = httpx.get(api.api + path, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert httpx.get(api.api + "/ui/nothing-here", timeout=10).status_code == 404


def test_the_feed_sends_a_change_within_a_second(api: PilotfishProcess) -> None:
    with httpx.stream("GET", api.api + "/ui/feed?page=services", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = frames(response)
        name, first = next(stream)
        assert name == "frame" and set(first["panels"]) == {"health", "main"}
        assert first["stale"] is False
        started = time.monotonic()
        register(api.api, "feed-svc", "f-1", 9100)
        for _, frame in stream:
            if "feed-svc" in frame["panels"].get("main", ""):
                break
        assert time.monotonic() - started < 1.0


def test_reads_follow_the_acl(acl_api: tuple[PilotfishProcess, Path]) -> None:
    process, _ = acl_api
    base = process.api
    page = httpx.get(base + "/", timeout=10)
    assert page.status_code == 200 and "hidden-svc" not in page.text
    assert "token with scope <code>read</code> is needed" in page.text
    status = httpx.get(base + "/ui/status.json", timeout=10).json()
    assert status["can_read"] is False and "services" not in status
    read = httpx.get(base + "/ui/status.json", timeout=10,
                     headers={"Authorization": f"Bearer {VIEWER}"}).json()
    assert read["services"] == {"hidden-svc": 1}
    unknown = httpx.get(base + "/ui/feed", headers={"Authorization": "Bearer nope-nope-1"},
                        timeout=10)
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"].startswith("Bearer")
    writer = httpx.get(base + "/ui/feed", headers={"Authorization": f"Bearer {DEPLOYER}"},
                       timeout=10)
    assert writer.status_code == 403 and writer.json()["scope"] == "read"
    refused_page = httpx.get(base + "/", headers={"Authorization": "Bearer nope-nope-1"},
                             timeout=10)
    assert "hidden-svc" not in refused_page.text and "Token refused" in refused_page.text


def test_a_token_taken_away_by_an_acl_reload_stops_its_feed(
        acl_api: tuple[PilotfishProcess, Path]) -> None:
    process, acl = acl_api
    with httpx.stream("GET", process.api + "/ui/feed?page=services", timeout=10,
                      headers={"Authorization": f"Bearer {VIEWER}"}) as response:
        stream = frames(response)
        name, first = next(stream)
        assert "hidden-svc" in first["panels"]["main"]
        acl.write_text(CLOSED_ACL.replace(VIEWER, "another-secret-9"))
        process.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        for name, _ in stream:
            if name == "denied" or time.monotonic() > deadline:
                break
        assert name == "denied"
        assert not list(stream)  # and the stream ended there


def test_stopping_the_server_ends_its_feeds_at_once() -> None:
    process = start_pilotfish("registry", "--api", "127.0.0.1:0", timeout=STARTUP)
    with process, httpx.stream("GET", process.api + "/ui/feed", timeout=10) as response:
        stream = frames(response)
        next(stream)
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(httpx.HTTPError):
            for _ in stream:
                pass
        process.process.wait(10)
        assert time.monotonic() - started < 1.5  # not the 2 s uvicorn would wait for it
    assert not process.crashes(), process.crashes()


def test_a_sidecar_alone_shows_its_own_page_at_the_root(api: PilotfishProcess,
                                                        tmp_path: Path) -> None:
    """No catalog view in a lone sidecar: `/` is the sidecar page, which says Docker is down
    while its engine does not answer."""
    with start_pilotfish("sidecar", "--registry", api.api, "--docker",
                         f"unix://{tmp_path}/no-docker.sock", "--advertise-ip", "127.0.0.1",
                         "--sidecar-id", "lone", "--sidecar-http", "127.0.0.1:0",
                         expect=("sidecar http",), timeout=STARTUP) as sidecar:
        page = httpx.get(f"http://{sidecar.listening['sidecar http']}/", timeout=10)
        assert page.status_code == 200
        assert 'data-feed="/ui/feed?page=sidecar"' in page.text
        assert '<a href="/ui/"' not in page.text.split("<nav>")[1].split("</nav>")[0]
        assert 'id="sidecar-docker"><span class="badge critical">down' in page.text
        assert "keeps no catalog view" in page.text
    assert not sidecar.crashes(), sidecar.crashes()
