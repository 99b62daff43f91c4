"""The LB's routes API under an ACL, and one SIGHUP that re-reads every file that asks for it.

Whoever changes a route decides where its traffic goes: with --lb-acl, changes need an admin
token. In `pilotfish up`, the registry's --acl, the LB's --lb-acl and --routes-file are all
re-read by the same SIGHUP (each component installing its own handler kept only the last).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.fixtures.servers import HOST, free_port
from tests.lb.conftest import start_lb

ACL = """default_read = true
[[token]]
name = "ops"
secret = "{admin}"
scopes = ["admin"]
[[token]]
name = "viewer"
secret = "viewer-secret"
scopes = ["read"]
"""


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _eventually(check: object, timeout: float = 5.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def test_route_changes_need_an_admin_token_and_sighup_rereads_every_file(
        tmp_path: Path) -> None:
    acl, routes = tmp_path / "acl.toml", tmp_path / "routes"
    acl.write_text(ACL.format(admin="old-admin"))
    first, second = free_port(), free_port()
    routes.write_text(f"{HOST}:{first}=web\n")
    lb = start_lb(extra=("--acl", str(acl), "--lb-acl", str(acl), "--routes-file", str(routes)))
    try:
        key = f"{HOST}:{free_port()}"
        body = {"service": "web"}
        anonymous = lb.lb_api.put(f"/v1/routes/{key}", json=body)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert lb.lb_api.put(f"/v1/routes/{key}", json=body,
                             headers=_bearer("nobody")).status_code == 401
        viewer = lb.lb_api.put(f"/v1/routes/{key}", json=body, headers=_bearer("viewer-secret"))
        assert viewer.status_code == 403
        assert viewer.json()["scope"] == "admin" and viewer.json()["token"] == "viewer"
        assert "viewer-secret" not in viewer.text
        assert lb.lb_api.delete(f"/v1/routes/{HOST}:{first}").status_code == 401
        assert lb.lb_api.get("/v1/routes").status_code == 200  # default_read
        assert lb.lb_api.get("/metrics").status_code == 200
        assert lb.lb_api.put(f"/v1/routes/{key}", json=body,
                             headers=_bearer("old-admin")).status_code == 201

        # One SIGHUP: the new admin secret on both APIs, and the new routes file.
        acl.write_text(ACL.format(admin="new-admin"))
        routes.write_text(f"{HOST}:{second}=web\n")
        lb.process.process.send_signal(signal.SIGHUP)

        def listed() -> set[str]:
            return {r["route"] for r in lb.lb_api.get("/v1/routes").json()["routes"]}

        _eventually(lambda: f"{HOST}:{second}=web" in listed())
        assert f"{HOST}:{first}=web" not in listed()
        _eventually(lambda: lb.lb_api.delete(f"/v1/routes/{key}",
                                             headers=_bearer("old-admin")).status_code == 401)
        removed = lb.lb_api.delete(f"/v1/routes/{key}", headers=_bearer("new-admin"))
        assert removed.status_code == 204
        lease = lb.api.post("/v1/leases", json={"ttl": 30}, headers=_bearer("new-admin"))
        assert lease.status_code == 201, lease.text
        assert lb.api.post("/v1/leases", json={"ttl": 30},
                           headers=_bearer("old-admin")).status_code == 401
        assert lb.process.process.poll() is None, "SIGHUP must never end the process"
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


def test_without_an_acl_the_routes_api_stays_open() -> None:
    lb = start_lb("web")
    try:
        key = f"{HOST}:{free_port()}"
        assert lb.lb_api.put(f"/v1/routes/{key}", json={"service": "web"}).status_code == 201
        lb.process.process.send_signal(signal.SIGHUP)  # nothing to re-read: still running
        assert httpx.get(f"{lb.process.api}/v1/health", timeout=5).status_code == 200
        assert lb.lb_api.delete(f"/v1/routes/{key}").status_code == 204
    finally:
        lb.close()
