"""The containers the scenarios run: busybox httpd on a host's address, SERVICE_NAME=web.

Each app is a real container on its host's engine (host network mode, one port each) that
answers HTTP with its own name, so a request through any LB shows which container served it.
Without the sidecar (`Cluster(sidecar=False)`, for harness work only) a `pilotfish register`
process in the host's namespace stands in for it; every scenario test runs with the sidecar.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from tests.cluster.hosts import APP_PORT, Cluster, ClusterHost
from tests.cluster.probes import Endpoint
from tests.fixtures.process import PilotfishProcess, start_pilotfish


@dataclass
class App:
    """One running web container."""

    host: ClusterHost
    name: str
    port: int
    container: str
    stand_in: PilotfishProcess | None = None

    @property
    def endpoint(self) -> Endpoint:
        """Where the catalog should say it is: its host's address and its port."""
        return (self.host.address, self.port)


@dataclass
class Workload:
    """The apps running on the cluster, and what each host's catalog should therefore hold."""

    cluster: Cluster
    apps: list[App] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)  # hosts that were killed: their apps are gone
    _ports: itertools.count[int] = field(default_factory=lambda: itertools.count(APP_PORT + 1))

    def start(self, host: ClusterHost) -> App:
        """Run one web container on the host; returns once `docker run` has started it."""
        port = next(self._ports)
        name = f"web-{host.name}-{port}"
        script = f"echo {name} > /index.html && exec httpd -f -p {host.address}:{port} -h /"
        container = host.docker.run(
            "--name", name, "--network", "host", "--expose", str(port),
            "-e", "SERVICE_NAME=web", command=("sh", "-c", script))
        app = App(host, name, port, container)
        if not self.cluster.sidecar:
            app.stand_in = start_pilotfish(
                "register", "--registry", self.cluster.registry_url(host),
                "--ttl", str(self.cluster.ttl), f"web/{name}={host.address}:{port}",
                prefix=tuple(host.net.nsenter), expect=())
        self.apps.append(app)
        return app

    def stop(self, app: App) -> None:
        """Remove the container (and its stand-in registrar)."""
        app.host.docker.remove(app.container)
        if app.stand_in is not None:
            app.stand_in.stop()
        self.apps.remove(app)

    def on(self, host: ClusterHost) -> list[App]:
        """The apps running on one host."""
        return [app for app in self.apps if app.host is host]

    def running(self, hosts: list[ClusterHost] | None = None) -> set[Endpoint]:
        """Endpoints of every app on live hosts (or on the given hosts)."""
        return {app.endpoint for app in self.apps if app.host.name not in self.lost
                and (hosts is None or app.host in hosts)}

    def host_lost(self, host: ClusterHost) -> None:
        """The host was killed: its apps no longer run."""
        self.lost.add(host.name)
        self.apps = [app for app in self.apps if app.host is not host]
