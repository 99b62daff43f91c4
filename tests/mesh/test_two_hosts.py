"""Mutual TLS end to end: two test hosts (network namespaces), each with its own dockerd and
`pilotfish up` (sidecar with the mesh), a two-member etcd between them. A client container on
host a reaches a server container on host b through the two sidecars; what crosses the link
is TLS only; no certificate, or a denied service's, is refused; an allow takes effect within
a second; certificates renewed during traffic lose no connection.

One set-up for every assertion (module scope); the cluster harness deletes every namespace,
link, engine and folder it made, also when a test fails.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pilotfish.mesh.identity import server_name
from tests.cluster.hosts import Cluster, ClusterHost
from tests.mesh.pki import DOMAIN, MeshPki

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

INBOUND_PORT, UPSTREAM_PORT, APP_PORT = 15001, 9000, 8000
CERT_TTL = 9  # seconds: renewed every 6 s, so the traffic test sees both sides renew
MARKER = "pf-secret-payload-7f3a9c"  # in the request path and in the page: never on the wire
ADMIN = "ops-secret-1"
ACL = f"""default_read = true
[[token]]
name = "host-a"
secret = "host-a-secret"
scopes = ["read", "write:web"]
[[token]]
name = "host-b"
secret = "host-b-secret"
scopes = ["read", "write:db"]
[[token]]
name = "ops"
secret = "{ADMIN}"
scopes = ["admin"]
"""


class MeshCluster(Cluster):
    """The cluster harness with the mesh on: host a holds the CA and the upstream to db."""

    def __init__(self, folder: Path, pki: MeshPki) -> None:
        super().__init__("etcd", names=("a", "b"))
        self.folder = folder
        self.pki = pki

    def pilotfish_args(self, host: ClusterHost, *extra: str) -> list[str]:
        at = host.address
        mesh = ["--acl", str(self.folder / "acl.toml"), "--trust-domain", DOMAIN,
                "--mesh-inbound", f"{at}:{INBOUND_PORT}",
                "--mesh-issuer", f"http://{self.hosts[0].address}:8500"]
        if host.name == "a":
            mesh += ["--mesh-ca-cert", str(self.pki.cert_path), "--mesh-ca-key",
                     str(self.pki.key_path), "--mesh-max-cert-ttl", str(CERT_TTL),
                     "--mesh-upstream", f"{at}:{UPSTREAM_PORT}=db?as=web"]
        return super().pilotfish_args(host, *mesh, *extra)

    def start_pilotfish(self, host: ClusterHost, *extra: str,
                        env: dict[str, str] | None = None) -> object:
        token = {"PILOTFISH_TOKEN": f"host-{host.name}-secret"}
        return super().start_pilotfish(host, *extra, env={**(env or {}), **token})


@dataclass
class Mesh:
    """The running set-up: the cluster, its two hosts, and the CA the test also holds."""

    cluster: MeshCluster
    a: ClusterHost
    b: ClusterHost
    pki: MeshPki

    @property
    def upstream(self) -> tuple[str, int]:
        return (self.a.address, UPSTREAM_PORT)

    def intention(self, action: str) -> None:
        answer = httpx.put(f"{self.a.api}/v1/intentions/web/db", json={"action": action},
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
        assert answer.status_code in (200, 201), answer.text

    def metric(self, host: ClusterHost, name: str) -> float:
        text = httpx.get(f"{host.sidecar_http}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def get(address: tuple[str, int], timeout: float = 3.0) -> bytes:
    """One HTTP/1.0 request through a plain socket; what came back (b"" when refused)."""
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(f"GET /{MARKER}.html HTTP/1.0\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
    except (ConnectionError, TimeoutError):
        return b""


def served(answer: bytes) -> bool:
    return answer.startswith(b"HTTP/1.") and f"{MARKER} from b".encode() in answer


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    folder = tmp_path_factory.mktemp("mesh")
    (folder / "acl.toml").write_text(ACL)
    pki = MeshPki.make(folder / "ca")
    with MeshCluster(folder, pki) as cluster:
        a, b = cluster.hosts
        page = f"{MARKER} from b"
        script = (f"mkdir -p /www && echo '{page}' > /www/{MARKER}.html && "
                  f"exec httpd -f -p 127.0.0.1:{APP_PORT} -h /www")
        b.docker.run("--name", "db", "--network", "host", "--expose", str(APP_PORT),
                     "-e", "SERVICE_NAME=db", "-l", "SERVICE_MTLS=1", command=("sh", "-c", script))
        made = Mesh(cluster, a, b, pki)
        made.intention("allow")
        deadline = time.monotonic() + 45
        while not served(get(made.upstream)) and time.monotonic() < deadline:
            time.sleep(0.2)  # b's certificate, its registration, a's view: all must be there
        yield made
        crashes = cluster.crashes()
    assert not crashes, crashes


def test_a_client_container_on_a_reaches_the_server_on_b_and_the_link_carries_only_tls(
    mesh: Mesh, tmp_path: Path
) -> None:
    capture = tmp_path / "link.pcap"
    inner = f"pf{mesh.cluster.network.token}bi"  # host b's end of its link
    tcpdump = subprocess.Popen(  # immediate: without it, packets wait in the ring buffer
        [*mesh.b.net.nsenter, "tcpdump", "-i", inner, "-s", "0", "-U", "--immediate-mode",
         "-Z", "root", "-w", str(capture)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert tcpdump.stderr is not None
        assert b"listening on" in tcpdump.stderr.readline()  # capturing from here on
        url = f"http://{mesh.a.address}:{UPSTREAM_PORT}/{MARKER}.html"
        page = mesh.a.docker.docker("run", "--rm", "--network", "host", mesh.a.docker.
                                    import_busybox(), "wget", "-qO-", url, timeout=60)
        assert page.strip() == f"{MARKER} from b"
        time.sleep(0.5)
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.communicate(timeout=10)
    wire = capture.read_bytes()
    assert len(wire) > 2000, "the capture saw the connection"
    assert server_name("db", DOMAIN).encode() in wire  # the TLS handshake crossed this link
    assert MARKER.encode() not in wire  # neither the request nor the page, in the clear
    catalog = httpx.get(f"{mesh.a.api}/v1/services/db", timeout=5).json()
    [registered] = catalog["instances"]
    assert (registered["address"], registered["port"]) == (mesh.b.address, INBOUND_PORT)
    assert registered["meta"]["mtls"] == "1"
    assert get((mesh.b.address, APP_PORT), timeout=2) == b""  # the app itself is not reachable


def _tls_client(mesh: Mesh, service: str | None) -> str:
    """openssl s_client on host b's network, presenting `service`'s certificate (or none)."""
    command = [*mesh.b.net.nsenter, "openssl", "s_client", "-quiet", "-tls1_3",
               "-connect", f"{mesh.b.address}:{INBOUND_PORT}", "-servername",
               server_name("db", DOMAIN), "-CAfile", str(mesh.pki.cert_path)]
    if service is not None:
        cert, key = mesh.pki.files(service)
        command += ["-cert", str(cert), "-key", str(key)]
    request = f"GET /{MARKER}.html HTTP/1.0\r\n\r\n"
    done = subprocess.run(command, input=request, capture_output=True, text=True, timeout=20)
    return done.stdout


def test_no_certificate_or_a_denied_services_certificate_is_refused(mesh: Mesh) -> None:
    refused_before = mesh.metric(mesh.b, 'pilotfish_mesh_inbound_refused_total{reason="denied"}')
    assert MARKER not in _tls_client(mesh, None)
    assert MARKER not in _tls_client(mesh, "cache")  # a real certificate; no intention allows it
    assert MARKER in _tls_client(mesh, "web")  # the same tool with an allowed identity
    assert mesh.metric(mesh.b, 'pilotfish_mesh_inbound_refused_total{reason="denied"}') \
        == refused_before + 1


def test_deny_then_allow_takes_effect_within_a_second(mesh: Mesh) -> None:
    mesh.intention("deny")
    deadline = time.monotonic() + 5
    while served(get(mesh.upstream)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served(get(mesh.upstream))
    mesh.intention("allow")
    allowed = time.monotonic()
    while not served(get(mesh.upstream, timeout=1)):
        assert time.monotonic() - allowed < 3, "the allow never took effect"
        time.sleep(0.02)
    took = time.monotonic() - allowed
    print(f"\ndeny -> allow took effect in {took:.2f} s")
    assert took <= 1.0


def test_certificate_rotation_during_traffic_loses_no_connection(mesh: Mesh) -> None:
    issued = [mesh.metric(host, "pilotfish_mesh_certificates_issued_total")
              for host in (mesh.a, mesh.b)]
    slow = socket.create_connection(mesh.upstream, timeout=10)  # one request, sent slowly
    slow.sendall(f"GET /{MARKER}.html HTTP/1.0\r\n".encode())
    answers, started = 0, time.monotonic()
    while time.monotonic() - started < CERT_TTL * 2 / 3 + 2:
        assert served(get(mesh.upstream)), f"request {answers} failed during rotation"
        answers += 1
        slow.sendall(b"X-Pad: keep-me-open\r\n")
        time.sleep(0.1)
    slow.sendall(b"\r\n")
    reply = b""
    while chunk := slow.recv(65536):
        reply += chunk
    slow.close()
    assert served(reply), reply[:200]
    renewed = [mesh.metric(host, "pilotfish_mesh_certificates_issued_total") - before
               for host, before in zip((mesh.a, mesh.b), issued, strict=True)]
    print(f"\n{answers} requests during rotation; certificates renewed a/b: {renewed}")
    assert all(count >= 1 for count in renewed), renewed
