"""The status UI in a real browser: a page that shows what is registered and balanced, changes
without a reload when the catalog does, filters, follows the ACL, says when it is cut off,
and serves the API docs offline."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.acl import CLOSED_ACL, DEPLOYER, OPS, VIEWER
from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.fixtures.servers import free_port
from tests.ui.conftest import deregister, register

PROMPT = 1.0  # "changes appear without a reload within a second"
STARTUP = 60.0


@pytest.fixture(scope="module")
def up(web_backend: int) -> Iterator[PilotfishProcess]:
    """`pilotfish up` with DNS and an LB route to `web`, which has one instance."""
    process = start_pilotfish(
        "up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--lb-api", "127.0.0.1:0",
        "--route", f"127.0.0.1:{free_port()}=web",
        expect=("registry API", "lb API", "lb route to web"),
        timeout=STARTUP)
    with process:
        register(process.api, "web", "web-1", web_backend, tags=["blue"], meta={"zone": "a"})
        register(process.api, "db", "db-1", 5432, health="warning")
        yield process
    assert not process.crashes(), process.crashes()


def _row(service: str) -> str:
    return f"#main tr[data-search^='{service} '], #main tr[data-search='{service}']"


def test_a_registration_shows_and_goes_without_a_reload(page: Page, up: PilotfishProcess,
                                                        shots: Path) -> None:
    page.goto(up.api + "/")
    expect(page.locator(_row("web"))).to_be_visible()
    expect(page.locator("#connection")).to_contain_text("live")
    page.evaluate("window.notReloaded = true")
    started = time.monotonic()
    register(up.api, "payments", "pay-1", 9000)
    page.locator(_row("payments")).wait_for(timeout=3000)
    shown = time.monotonic() - started
    page.screenshot(path=shots / "services.png", full_page=True)
    started = time.monotonic()
    deregister(up.api, "payments", "pay-1")
    page.locator(_row("payments")).wait_for(state="detached", timeout=3000)
    gone = time.monotonic() - started
    assert page.evaluate("window.notReloaded") is True
    assert shown < PROMPT and gone < PROMPT, (shown, gone)


def test_search_then_a_service_page(page: Page, up: PilotfishProcess) -> None:
    page.goto(up.api + "/ui/")
    page.locator("#filter").fill("blu")  # a tag of web's
    expect(page.locator(_row("web"))).to_be_visible()
    expect(page.locator(_row("db"))).to_be_hidden()
    page.locator("#filter").fill("")
    expect(page.locator(_row("db"))).to_be_visible()
    page.get_by_role("link", name="web", exact=True).click()
    page.wait_for_url("**/ui/services/web")
    main = page.locator("#main")
    expect(main.locator("tr[data-id='web-1']")).to_contain_text("127.0.0.1:")
    expect(main.locator("tr[data-id='web-1']")).to_contain_text("instance:web-1")  # registrar
    expect(main.locator("tr[data-id='web-1']")).to_contain_text("of 60 s")  # TTL left
    expect(main.locator("tr[data-id='web-1']")).to_contain_text("zone=a")
    for name in ("web.service.pilotfish", "_web._tcp.service.pilotfish",
                 "blue.web.service.pilotfish", "_web._blue.service.pilotfish"):
        expect(main.locator("ul.dns")).to_contain_text(name)
    register(up.api, "web", "web-2", 9001)  # the open service page takes it in too
    expect(main.locator("tr[data-id='web-2']")).to_be_visible(timeout=2000)
    deregister(up.api, "web", "web-2")


def test_the_lb_port_shows_routes_pools_and_bytes(page: Page, up: PilotfishProcess,
                                                  shots: Path) -> None:
    route = "http://" + up.listening["lb route to web"]
    assert httpx.get(route + "/", timeout=10).status_code in (200, 404)
    page.goto("http://" + up.listening["lb API"] + "/ui/lb")
    backend = page.locator("section.route tr[data-backend]").first
    expect(backend).to_contain_text("web-1")
    expect(backend).to_contain_text("healthy")
    expect(backend).not_to_contain_text("0 B0 B")
    total = backend.locator("td").nth(5)
    before = int(total.inner_text())
    httpx.get(route + "/", timeout=10)
    expect(total).to_have_text(str(before + 1), timeout=3000)  # counters are live too
    expect(page.locator("#health-dns")).to_contain_text("answers/s")
    expect(page.locator("nav")).to_contain_text("Load balancer")
    page.screenshot(path=shots / "lb.png", full_page=True)


def test_the_api_docs_render_offline(page: Page, up: PilotfishProcess) -> None:
    page.goto(up.api + "/v1/docs")
    page.locator(".opblock").first.wait_for(timeout=10_000)
    assert page.locator(".opblock").count() >= 10
    expect(page.locator("#swagger-ui")).to_contain_text("/v1/services/{service}")
    host = up.api.removeprefix("http://")
    assert all(url.startswith(("http://" + host, "data:")) for url in page.urls), page.urls




def _use_token(page: Page, secret: str) -> None:
    """Type a token into the page's Token box, as a person would."""
    if not page.locator("#token").evaluate("details => details.open"):
        page.locator("#token summary").click()
    page.locator("#token-input").fill(secret)
    page.locator("#token-input").press("Enter")


def test_reads_follow_the_acl_and_the_token_stays_out_of_urls(
        page: Page, tmp_path: Path, shots: Path) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(CLOSED_ACL)
    with start_pilotfish("registry", "--api", "127.0.0.1:0", "--acl", str(acl),
                         timeout=STARTUP) as api:
        register(api.api, "hidden-svc", "h-1", 7000, token=OPS)
        page.goto(api.api + "/")
        expect(page.locator("#main")).to_contain_text("token with scope read is needed")
        expect(page.locator("#connection")).to_contain_text("live")
        assert "hidden-svc" not in page.content()
        page.screenshot(path=shots / "locked.png")

        _use_token(page, VIEWER)
        expect(page.locator(_row("hidden-svc"))).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('pilotfish.token')") == VIEWER
        page.reload()  # the tab keeps it
        expect(page.locator(_row("hidden-svc"))).to_be_visible()

        for refused in ("not-a-token-at-all", DEPLOYER):  # unknown; no read scope
            _use_token(page, refused)
            expect(page.locator("#token-state")).to_contain_text("refused")
            expect(page.locator("#main")).to_contain_text("token with scope read is needed")
            assert page.evaluate("sessionStorage.getItem('pilotfish.token')") is None
        assert not any(secret in url for url in page.urls for secret in (
            VIEWER, "not-a-token-at-all", DEPLOYER)), page.urls
    assert not api.crashes(), api.crashes()


def test_stale_then_disconnected(page: Page, web_backend: int, shots: Path) -> None:
    """An LB reading the catalog through a registry API: the registry dies (the view goes
    stale, the page says since when), then the LB itself (the page says disconnected)."""
    registry = start_pilotfish("registry", "--api", "127.0.0.1:0", timeout=STARTUP)
    with registry:
        register(registry.api, "web", "web-1", web_backend)
        with start_pilotfish("lb", "--registry", registry.api, "--lb-api", "127.0.0.1:0",
                             "--route", f"127.0.0.1:{free_port()}=web", expect=("lb API",),
                             timeout=STARTUP) as lb:
            page.goto("http://" + lb.listening["lb API"] + "/")
            expect(page.locator(_row("web"))).to_be_visible()
            expect(page.locator("#connection")).to_contain_text("live")
            registry.stop(signal.SIGKILL)
            expect(page.locator("#connection")).to_contain_text("stale since", timeout=10_000)
            expect(page.locator("#health-view")).to_contain_text("Backend unreachable")
            expect(page.locator(_row("web"))).to_be_visible()  # fail static: still shown
            page.screenshot(path=shots / "stale.png")
            lb.stop()
            expect(page.locator("#connection")).to_contain_text("disconnected since",
                                                                timeout=10_000)
            page.screenshot(path=shots / "disconnected.png")
        assert not lb.crashes(), lb.crashes()


def test_the_sidecar_port_shows_each_container_and_why(
        page: Page, docker: DockerEngine, shots: Path) -> None:
    """A sidecar on a real Docker engine: one container registered, one on network none and
    one without SERVICE_NAME (under --explicit) listed with the reason they were skipped."""
    unique = uuid.uuid4().hex[:8]
    with start_pilotfish("up", "--api", "127.0.0.1:0", "--dns", "off", "--docker", docker.host,
                         "--advertise-ip", "127.0.0.1", "--sidecar-id", f"s{unique}",
                         "--explicit", "--sidecar-http", "127.0.0.1:0",
                         expect=("registry API", "sidecar http"), timeout=STARTUP) as up:
        docker.run("--network", "host", "--name", f"app-{unique}",
                   "-l", f"SERVICE_NAME=app-{unique}", "-l", f"SERVICE_PORT={free_port()}")
        docker.run("--network", "none", "--name", f"lonely-{unique}",
                   "-l", f"SERVICE_NAME=lonely-{unique}", "-l", "SERVICE_PORT=80")
        docker.run("--network", "host", "--name", f"anon-{unique}",
                   "--expose", str(free_port()))
        page.goto("http://" + up.listening["sidecar http"] + "/ui/sidecar")
        expect(page.locator("#sidecar-docker")).to_contain_text("up")
        expect(page.locator(f"tr[data-container='app-{unique}']")).to_contain_text(
            f"app-{unique} s{unique}:app-{unique}", timeout=10_000)
        expect(page.locator(f"tr[data-container='lonely-{unique}']")).to_contain_text(
            "network-none")
        expect(page.locator(f"tr[data-container='anon-{unique}']")).to_contain_text("explicit")
        expect(page.locator("#sidecar-lease")).to_contain_text("renewed", timeout=10_000)
        expect(page.locator("#health-sidecar")).to_contain_text("Docker up")
        page.screenshot(path=shots / "sidecar.png", full_page=True)
    assert not up.crashes(), up.crashes()
