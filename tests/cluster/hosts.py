"""Three test hosts, each with its own Docker engine, catalog member and `pilotfish up`.

`Cluster` is the whole topology as one context manager (for the tests' fixtures and for
bench/cluster.py): a namespace per host on one bridge, a 3-member etcd cluster or ZooKeeper
ensemble with one member per host, a dockerd per host (started with `nsenter --net=…`) with
a busybox image, and one `pilotfish up` per host run in its namespace: sidecar on that host's
engine, DNS, LB and API on that host's address. Teardown stops everything and deletes every
namespace, link and folder, also when the set-up failed half-way.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tests.cluster.backends import ClusterBackend, HostEtcd, HostZooKeeper
from tests.cluster.network import HostNetwork, NetHost
from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import PilotfishProcess, start_pilotfish

NAMES = ("a", "b", "c")
API_PORT, DNS_PORT, DNS_METRICS_PORT, LB_API_PORT, ROUTE_PORT = 8500, 8600, 8601, 8700, 8080
SIDECAR_PORT = 8800
APP_PORT = 8000  # where the test containers' httpd listens (host network mode)
DOMAIN = "pilotfish"
TTL = 10  # seconds (pilotfish's default): a restarted pilotfish must hold its containers
# again within 2/3 of it, and a restart took up to 9 s on a loaded 2-core machine


class HostDocker(DockerEngine):
    """A dockerd whose network namespace is a test host's (containers with --network host
    live at that host's address)."""

    def __init__(self, host: NetHost, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.net_host = host

    def _command(self) -> list[str]:
        return [*self.net_host.nsenter, *super()._command()]


@dataclass
class ClusterHost:
    """One test host: its network side, engine, and (while it runs) its pilotfish."""

    index: int
    net: NetHost
    workdir: Path
    docker: HostDocker
    pilotfish: PilotfishProcess | None = None
    history: list[PilotfishProcess] = field(default_factory=list)

    @property
    def name(self) -> str:
        """a, b or c."""
        return self.net.name

    @property
    def address(self) -> str:
        """The host's address on the bridge (where its DNS, LB and containers listen)."""
        return self.net.address

    @property
    def api(self) -> str:
        """Base URL of this host's registry API."""
        return f"http://{self.address}:{API_PORT}"

    @property
    def lb_api(self) -> str:
        """Base URL of this host's LB API (/health, /metrics, /v1/routes)."""
        return f"http://{self.address}:{LB_API_PORT}"

    @property
    def sidecar_http(self) -> str:
        """Base URL of this host's sidecar /health and /metrics."""
        return f"http://{self.address}:{SIDECAR_PORT}"

    @property
    def dns_metrics(self) -> str:
        """Base URL of this host's DNS /health and /metrics."""
        return f"http://{self.address}:{DNS_METRICS_PORT}"


class Cluster:
    """The three-host topology on one backend ("etcd" or "zk"), as a context manager."""

    def __init__(self, backend: str = "etcd", ttl: int = TTL, names: Iterable[str] = NAMES,
                 sidecar: bool = True, pre_vote: bool = True) -> None:
        if backend not in ("etcd", "zk"):
            raise ValueError(f"backend: etcd or zk, not {backend!r}")
        self.kind = backend
        self.ttl = ttl
        self.sidecar = sidecar
        self.pre_vote = pre_vote
        self.names = tuple(names)
        self.workdir = Path(tempfile.mkdtemp(prefix="pf-cl-", dir="/tmp"))
        self.network = HostNetwork(self.names)
        self.hosts: list[ClusterHost] = []
        self.backend: ClusterBackend | None = None

    def start(self) -> Cluster:
        """Bring up network, backend members, engines and one pilotfish per host."""
        self.network.open()
        for index, net in enumerate(self.network.hosts):
            workdir = self.workdir / net.name
            workdir.mkdir()
            self.hosts.append(ClusterHost(index, net, workdir, HostDocker(net, workdir / "d")))
        nets = [host.net for host in self.hosts]
        self.backend = (HostEtcd(nets, self.workdir / "etcd", self.pre_vote)
                        if self.kind == "etcd"
                        else HostZooKeeper(nets, self.workdir / "zk"))
        self.backend.start()
        _in_parallel([partial(_start_engine, host.docker) for host in self.hosts])
        for host in self.hosts:
            self.start_pilotfish(host)
        return self

    def registry_url(self, host: ClusterHost) -> str:
        """The URL the host's pilotfish gets: every member, its own member first."""
        assert self.backend is not None
        return self.backend.url(host.index)

    def pilotfish_args(self, host: ClusterHost, *extra: str) -> list[str]:
        """`pilotfish up` for one host: sidecar on its engine, DNS, LB and API on its address."""
        at = host.address
        return [
            "up", "--registry", self.registry_url(host),
            "--api", f"{at}:{API_PORT}", "--dns", f"{at}:{DNS_PORT}", "--domain", DOMAIN,
            "--dns-metrics", f"{at}:{DNS_METRICS_PORT}",
            "--route", f"{at}:{ROUTE_PORT}=web", "--lb-api", f"{at}:{LB_API_PORT}",
            # Namespaces share the machine's host name: each sidecar needs an id of its own.
            *(("--docker", host.docker.host, "--advertise-ip", at, "--ttl", str(self.ttl),
               "--sidecar-id", host.name, "--keep-on-exit",
               "--sidecar-http", f"{at}:{SIDECAR_PORT}") if self.sidecar else ()),
            *extra,
        ]

    def start_pilotfish(self, host: ClusterHost, *extra: str,
                        env: dict[str, str] | None = None) -> PilotfishProcess:
        """Start the host's `pilotfish up` (given extra flags and environment) and wait until
        DNS, LB and API listen."""
        running = start_pilotfish(
            *self.pilotfish_args(host, *extra), prefix=tuple(host.net.nsenter), env=env,
            expect=("registry API", "dns", "lb API", *(("sidecar http",) if self.sidecar else ())),
            timeout=60.0)  # imports took ~20 s on a fully loaded 2-core machine
        host.pilotfish = running
        host.history.append(running)
        return running

    def stop_pilotfish(self, host: ClusterHost, sig: int = signal.SIGTERM) -> int | None:
        """Stop the host's pilotfish; its exit code."""
        running, host.pilotfish = host.pilotfish, None
        return None if running is None else running.stop(sig)

    def kill_host(self, host: ClusterHost) -> list[int]:
        """SIGKILL every process of the host at once (pilotfish, dockerd, containerd, shims,
        containers, its catalog member): a machine that lost power."""
        pids = self.network.kill_host(host.net)
        host.pilotfish = None
        return pids

    def crashes(self) -> str:
        """Tracebacks any pilotfish of this cluster logged."""
        return "\n".join(f"{host.name}: {run.crashes()}" for host in self.hosts
                         for run in host.history if run.crashes())

    def keep_logs(self, folder: Path) -> None:
        """Copy every pilotfish's output and the backend members' logs into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            text = "".join(f"==== run {n}\n" + "".join(run.lines)
                           for n, run in enumerate(host.history))
            (folder / f"pilotfish-{host.name}.log").write_text(text)
        for log in [*self.workdir.glob("etcd/*.log"), *self.workdir.glob("zk/*/server.log")]:
            shutil.copy(log, folder / f"{log.parent.name}-{log.name}")

    def stop(self) -> None:
        """Stop pilotfish, engines and backend, delete namespaces, links and folders.

        With PILOTFISH_CLUSTER_LOGS=DIR set, every log is kept in DIR first.
        """
        if os.environ.get("PILOTFISH_CLUSTER_LOGS"):
            self.keep_logs(Path(os.environ["PILOTFISH_CLUSTER_LOGS"]) / self.workdir.name)
        try:
            for host in self.hosts:
                self.stop_pilotfish(host)
            _in_parallel([host.docker.stop for host in self.hosts])
            if self.backend is not None:
                self.backend.stop()
        finally:
            self.network.close()
            for host in self.hosts:
                host.docker.stop()  # unmounts what a killed engine left (idempotent)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_: object) -> None:
        self.stop()


def _start_engine(engine: DockerEngine) -> None:
    """Start one engine and give it the busybox image."""
    engine.start()
    engine.import_busybox()


def _in_parallel(calls: list[Callable[[], object]]) -> None:
    """Run the calls in threads; re-raise the first failure after all have finished."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
