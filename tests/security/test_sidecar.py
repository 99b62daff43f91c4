"""The sidecar on a TLS registry with an ACL, its Docker socket wrapped by a recording proxy:
it registers and withdraws containers with its token and uses the socket only to read."""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import StartPilotfish
from tests.fixtures.servers import free_port
from tests.security.certs import Pki, make_pki
from tests.sidecar.harness import STARTUP, wait_healthy

REQUEST_LINE = re.compile(rb"(?:^|\r\n\r\n)([A-Z]+) (\S+) HTTP/1\.[01]\r\n")
SIDECAR_SECRET = "sidecar-team-secret"


class RecordingProxy:
    """A unix socket in front of dockerd's that relays bytes and records each request line."""

    def __init__(self, listen: Path, upstream: Path) -> None:
        self.listen, self.upstream = listen, upstream
        self.requests: list[tuple[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_unix_server(self._client, str(self.listen)))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            self._loop.run_until_complete(
                asyncio.gather(*self._tasks, return_exceptions=True))
            self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        try:
            await asyncio.gather(self._pump(reader, up_writer, record=True),
                                 self._pump(up_reader, writer, record=False))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    record: bool) -> None:
        seen = b""
        while data := await reader.read(65536):
            if record:
                seen = (seen + data)[-65536:]
                for match in REQUEST_LINE.finditer(seen):
                    self.requests.append((match[1].decode(), match[2].decode()))
                seen = seen[seen.rfind(b"\r\n\r\n") + 4:] if b"\r\n\r\n" in seen else seen
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def proxy(docker: DockerEngine) -> Iterator[RecordingProxy]:
    with RecordingProxy(docker.base_dir / "recorded.sock", docker.socket) as recording:
        yield recording


def test_sidecar_on_tls_and_acl_only_reads_the_docker_socket(
        docker: DockerEngine, proxy: RecordingProxy, pki: Pki, pilotfish: StartPilotfish,
        tmp_path: Path, unique: str) -> None:
    acl = tmp_path / "acl.toml"
    acl.write_text(f'default_read = false\n[[token]]\nname = "sidecars"\n'
                   f'secret = "{SIDECAR_SECRET}"\nscopes = ["read", "write:*"]\n')
    registry = pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0",
                         "--acl", str(acl), "--tls-cert", str(pki.server_cert),
                         "--tls-key", str(pki.server_key))
    url = "https://" + registry.listening["registry API"]
    sidecar = pilotfish("sidecar", "--registry", url, "--ca-file", str(pki.ca),
                        "--advertise-ip", "127.0.0.1", "--ttl", "3", "--sidecar-id", unique,
                        "--sidecar-http", "127.0.0.1:0",
                        env={"DOCKER_HOST": f"unix://{proxy.listen}",
                             "PILOTFISH_TOKEN": SIDECAR_SECRET},
                        expect=("sidecar http",), timeout=STARTUP)
    wait_healthy(sidecar)
    service, port = f"sec-{unique}", free_port()
    docker.run("--network", "host", "--name", f"c-{unique}", "-l", f"SERVICE_NAME={service}",
               "-l", f"SERVICE_PORT={port}")
    verify = ssl.create_default_context(cafile=pki.ca)
    headers = {"Authorization": f"Bearer {SIDECAR_SECRET}"}

    def registered() -> list[str]:
        response = httpx.get(f"{url}/v1/services/{service}", headers=headers, verify=verify,
                             timeout=5)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["instances"]]

    deadline = time.monotonic() + 15
    while registered() != [f"{unique}:c-{unique}:{port}"]:
        assert time.monotonic() < deadline, sidecar.lines[-20:]
        time.sleep(0.1)
    docker.stop_containers(f"c-{unique}")
    deadline = time.monotonic() + 15
    while registered():
        assert time.monotonic() < deadline, sidecar.lines[-20:]
        time.sleep(0.1)
    assert sidecar.stop() == 0

    methods = {method for method, _ in proxy.requests}
    paths = [path.split("?")[0] for _, path in proxy.requests]
    assert methods == {"GET"}, proxy.requests
    assert any(p.endswith("/events") for p in paths), paths  # it followed the event stream
    assert any(re.search(r"/containers/[0-9a-f]{12,}/json$", p) for p in paths), paths
    allowed = re.compile(r"(/v[0-9.]+)?(/_ping|/version|/info|/events|/containers/json"
                         r"|/containers/[^/]+/json)")
    assert all(allowed.fullmatch(p) for p in paths), sorted(set(paths))
    assert SIDECAR_SECRET not in "".join(sidecar.lines)
