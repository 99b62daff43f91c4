"""One compose stack from compose/ run on the test engine with tests/compose/override.yml.

`ComposeStack` picks free host ports and an unused subnet, runs Debian's docker-compose (1.29)
in compose/ as a user would, finds the containers of a service, and after `down` lists
whatever the stack left behind: containers, networks, volumes, processes, addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.docker import DockerEngine
from tests.fixtures.servers import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
OVERRIDE = Path(__file__).with_name("override.yml")
STACKS = ("embedded", "etcd", "zookeeper", "consul")
PROJECT_LABEL = "com.docker.compose.project"
PROXY_TARGET = re.compile(r"-container-ip (\S+)")  # docker-proxy, forwarding a published port


def images_named(path: Path) -> set[str]:
    """Every image a compose file names."""
    services = yaml.safe_load(path.read_text())["services"]
    return {service["image"] for service in services.values()}


def named_volumes(stack: str) -> set[str]:
    """The named volumes compose/<stack>.yml declares."""
    return set(yaml.safe_load((COMPOSE_DIR / f"{stack}.yml").read_text()).get("volumes") or {})


def compose_setting(stack: str, service: str, flag: str) -> str:
    """The value of `--flag=VALUE` in a service's command in compose/<stack>.yml."""
    command = yaml.safe_load((COMPOSE_DIR / f"{stack}.yml").read_text())["services"][service][
        "command"]
    for word in command:
        if str(word).startswith(f"--{flag}="):
            return str(word).partition("=")[2]
    raise AssertionError(f"{stack}.yml: {service} has no --{flag}")


def unused_subnet() -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no route or address on this machine overlaps."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout.split()
    taken = []
    for word in routes:
        try:
            taken.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            continue
    for _ in range(100):
        second, third = random.randint(200, 254), random.randrange(256)
        subnet = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
        if not any(subnet.overlaps(other) for other in taken if other.prefixlen >= 8):
            return subnet
    raise RuntimeError("no unused 10.x.y.0/24 subnet")


def docker_time(text: str) -> float:
    """A Docker timestamp (RFC 3339, nanoseconds) as seconds since the epoch."""
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    return moment.timestamp() + float("0." + (fraction or "0"))


@dataclass
class ComposeStack:
    """compose/<name>.yml plus the override, as project `project` on the test engine."""

    engine: DockerEngine
    name: str
    project: str = field(default_factory=lambda: f"pf{uuid.uuid4().hex[:8]}")
    subnet: ipaddress.IPv4Network = field(default_factory=unused_subnet)
    ports: dict[str, int] = field(default_factory=lambda: {
        key: free_port() for key in ("API", "DNS", "LB", "LB_API", "CONSUL")})
    seen: set[str] = field(default_factory=set)  # every container id the stack ever had

    @property
    def env(self) -> dict[str, str]:
        """What docker-compose runs with: the engine, the ports, the override's settings."""
        return {**self.engine.env, **{f"PF_{k}_PORT": str(v) for k, v in self.ports.items()},
                "PF_TEST_SUBNET": str(self.subnet),
                "PF_TEST_DOCKER_SOCKET": str(self.engine.socket)}

    def compose(self, *args: str, timeout: float = 300.0) -> str:
        """Run `docker-compose ARGS` in compose/ on this stack; its output, or fail with it."""
        result = subprocess.run(self.command(*args), cwd=COMPOSE_DIR, capture_output=True,
                                text=True, env=self.env, timeout=timeout)
        assert result.returncode == 0, \
            f"docker-compose {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start `docker-compose ARGS` in the background (output on its stdout)."""
        return subprocess.Popen(self.command(*args), cwd=COMPOSE_DIR, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def command(self, *args: str) -> list[str]:
        """The docker-compose command line for ARGS."""
        return ["docker-compose", "-p", self.project, "-f", f"{self.name}.yml",
                "-f", str(OVERRIDE), *args]

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

    def logs(self) -> str:
        """The end of every service's log, for failure messages."""
        result = subprocess.run(self.command("logs", "--no-color", "--tail=30"), cwd=COMPOSE_DIR,
                                capture_output=True, text=True, env=self.env, timeout=60)
        return result.stdout + result.stderr

    def address(self, container: dict[str, Any]) -> str:
        """The container's address on the stack's network."""
        networks = container["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    def down(self) -> None:
        """`docker-compose down` with volumes, remembering every container it had first."""
        self.seen.update(self.engine.docker(
            "ps", "-aq", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={self.project}").split())
        for attempt in range(5):
            try:
                self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
                return
            except AssertionError as failed:
                # dockerd can still be releasing the last endpoints when compose removes the
                # network ("has active endpoints"); a second `down` finds them gone.
                if "has active endpoints" not in str(failed) or attempt == 4:
                    raise
                time.sleep(1.0)

    def leftovers(self) -> list[str]:
        """What is left of the stack: containers, networks, volumes, processes, addresses."""
        left = []
        label = f"label={PROJECT_LABEL}={self.project}"
        for kind, args in (("container", ("ps", "-aq")), ("network", ("network", "ls", "-q")),
                           ("volume", ("volume", "ls", "-q"))):
            left += [f"{kind} {item}" for item in
                     self.engine.docker(*args, "--filter", label).split()]
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
                    proxied and ipaddress.ip_address(proxied[1]) in self.subnet):
                left.append(f"process {pid.name}: {text.splitlines()[0][:200]}")
        addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                                   check=True).stdout
        left += [f"address {line.split()[3]} on {line.split()[1]}"
                 for line in addresses.splitlines()
                 if ipaddress.ip_interface(line.split()[3]).ip in self.subnet]
        return left
