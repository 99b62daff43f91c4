"""The sidecar page's Mesh part, from a real sidecar with the mesh on and a real CA: the
inbound port, a certificate it holds, and the intentions in force as the API set them."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.fixtures.process import start_pilotfish
from tests.fixtures.servers import free_port
from tests.mesh.pki import DOMAIN, start_ca_registry

STARTUP = 60.0
ACL = """default_read = false
[[token]]
name = "host"
secret = "host-secret"
scopes = ["read", "write:web"]
[[token]]
name = "ops"
secret = "ops-secret"
scopes = ["admin"]
"""


def test_the_sidecar_page_shows_its_certificates_and_the_intentions(tmp_path: Path) -> None:
    (tmp_path / "host.token").write_text("host-secret\n")
    api, _ = start_ca_registry(tmp_path, ACL)
    with api:
        admin = {"Authorization": "Bearer ops-secret"}
        put = httpx.put(f"{api.api}/v1/intentions/web/db", headers=admin, timeout=10,
                        json={"action": "allow", "description": "orders <read>"})
        assert put.status_code == 201, put.text
        inbound = f"127.0.0.1:{free_port()}"
        with start_pilotfish("sidecar", "--registry", api.api, "--token-file",
                             str(tmp_path / "host.token"), "--docker",
                             f"unix://{tmp_path}/no-docker.sock", "--advertise-ip", "127.0.0.1",
                             "--sidecar-id", "m", "--sidecar-http", "127.0.0.1:0",
                             "--trust-domain", DOMAIN, "--mesh-inbound", inbound,
                             "--mesh-upstream", f"127.0.0.1:{free_port()}=db?as=web",
                             expect=("sidecar http",), timeout=STARTUP) as sidecar:
            base = f"http://{sidecar.listening['sidecar http']}"
            deadline = time.monotonic() + 15
            while True:
                mesh = httpx.get(f"{base}/ui/status.json", headers={
                    "Authorization": "Bearer host-secret"}, timeout=10).json()["sidecar"]["mesh"]
                if mesh["certificates"] and mesh["intentions_version"] > 0:
                    break
                assert time.monotonic() < deadline, mesh
                time.sleep(0.1)
            assert mesh["inbound"] == inbound and mesh["waiting"] == []
            [certificate] = mesh["certificates"]
            assert certificate["service"] == "web" and certificate["expires_in"] > 60
            assert mesh["intentions"] == [{"source": "web", "destination": "db",
                                           "action": "allow", "description": "orders <read>"}]
            page = httpx.get(f"{base}/ui/sidecar", timeout=10).text
            mesh_part = page.split("<h3>Mesh</h3>")[1].split("<h3>Recent errors</h3>")[0]
            assert f"<code>{inbound}</code>" in mesh_part
            assert 'data-certificate="web"' in mesh_part and "valid" in mesh_part
            assert "orders &lt;read&gt;" in mesh_part and "<read>" not in mesh_part
        assert not sidecar.crashes(), sidecar.crashes()
    assert not api.crashes(), api.crashes()
