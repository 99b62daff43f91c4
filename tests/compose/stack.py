"""What the test sees of a compose project on the test engine, besides the tour's own output.

`ComposeProject` finds the containers of a service, when one died, its address on the stack's
network, and after `down` lists whatever the project left behind: containers, networks,
volumes, processes, addresses in the engine's address pool. `purge` removes the project by its
labels whatever state a failed test left it in.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.docker import DockerEngine, DockerError
from tests.fixtures.servers import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
STACKS = ("embedded", "etcd", "zookeeper", "consul")
PROJECT_LABEL = "com.docker.compose.project"
PROXY_TARGET = re.compile(r"-container-ip (\S+)")  # docker-proxy, forwarding a published port


def images_named(path: Path) -> set[str]:
    """Every image a compose file names."""
    services = yaml.safe_load(path.read_text())["services"]
    return {service["image"] for service in services.values()}


def compose_setting(stack: str, service: str, flag: str) -> str:
    """The value of `--flag=VALUE` in a service's command in compose/<stack>.yml."""
    command = yaml.safe_load((COMPOSE_DIR / f"{stack}.yml").read_text())["services"][service][
        "command"]
    for word in command:
        if str(word).startswith(f"--{flag}="):
            return str(word).partition("=")[2]
    raise AssertionError(f"{stack}.yml: {service} has no --{flag}")


def docker_time(text: str) -> float:
    """A Docker timestamp (RFC 3339, nanoseconds) as seconds since the epoch."""
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    return moment.timestamp() + float("0." + (fraction or "0"))


@dataclass
class ComposeProject:
    """One compose project (a name, free host ports) on the test engine."""

    engine: DockerEngine
    project: str = field(default_factory=lambda: f"pf{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=lambda: {
        key: free_port() for key in ("API", "DNS", "LB", "LB_API", "CONSUL")})
    seen: set[str] = field(default_factory=set)  # every container id the project ever had

    def containers(self, service: str, all_states: bool = False) -> list[dict[str, Any]]:
        """`docker inspect` of the service's containers (running ones unless all_states)."""
        args = ["ps", "-q", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={self.project}",
                "--filter", f"label=com.docker.compose.service={service}"]
        ids = self.engine.docker(*args, *(["-a"] if all_states else [])).split()
        self.seen.update(ids)
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(self.engine.docker("inspect", *ids))
        return sorted(found, key=lambda c: str(c["Name"]))

    def died_at(self, container_id: str, timeout: float = 30.0) -> float:
        """When the container's process ended (waiting until the engine says it has)."""
        deadline = time.monotonic() + timeout
        while (state := self.engine.inspect(container_id)["State"])["Running"]:
            assert time.monotonic() < deadline, f"{container_id} still runs"
            time.sleep(0.02)
        return docker_time(state["FinishedAt"])

    def address(self, container: dict[str, Any]) -> str:
        """The container's address on the stack's network."""
        networks = container["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    def _all(self) -> list[str]:
        ids = self.engine.docker(
            "ps", "-aq", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={self.project}").split()
        self.seen.update(ids)
        return ids

    def logs(self) -> str:
        """The end of every container's log, for failure messages."""
        parts = []
        for container in self._all():
            try:
                name = self.engine.inspect(container)["Name"]
                result = self.engine.docker("logs", "--tail=30", container)
            except DockerError as failed:
                result, name = str(failed), container
            parts.append(f"--- {name}\n{result}")
        return "\n".join(parts)

    def purge(self) -> None:
        """Remove whatever the project left: containers, networks, volumes (after a failure)."""
        label = f"label={PROJECT_LABEL}={self.project}"
        if ids := self._all():
            self.engine.docker("rm", "-f", "-v", *ids, timeout=120)
        for kind in ("network", "volume"):
            if found := self.engine.docker(kind, "ls", "-q", "--filter", label).split():
                self.engine.docker(kind, "rm", *found)

    def leftovers(self) -> list[str]:
        """What is left of the project: containers, networks, volumes, processes, addresses."""
        self._all()
        left = []
        label = f"label={PROJECT_LABEL}={self.project}"
        for kind, args in (("container", ("ps", "-aq")), ("network", ("network", "ls", "-q")),
                           ("volume", ("volume", "ls", "-q"))):
            left += [f"{kind} {item}" for item in
                     self.engine.docker(*args, "--filter", label).split()]
        pool = self.engine.address_pool
        for pid in Path("/proc").iterdir():
            if not pid.name.isdigit():
                continue
            try:
                text = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode() + \
                    (pid / "cgroup").read_text()
            except OSError:
                continue
            proxied = PROXY_TARGET.search(text)
            if any(c in text for c in self.seen) or (
                    proxied and ipaddress.ip_address(proxied[1]) in pool):
                left.append(f"process {pid.name}: {text.splitlines()[0][:200]}")
        addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                                   check=True).stdout.splitlines()
        left += [f"address {line.split()[3]} on {line.split()[1]}" for line in addresses
                 if ipaddress.ip_interface(line.split()[3]).ip in pool]
        return left

