"""Test hosts as network namespaces on one Linux bridge: addresses, partitions, teardown.

Each run gets names of its own (`pf<token>…`) and a /24 under 10.250.0.0/16 that no route on
this machine uses yet, so concurrent runs never clash. The host side of the bridge holds .1,
the test hosts .2, .3, … Processes run "on" a host through `nsenter --net=…` (not
`ip netns exec`, which remounts /sys and breaks dockerd). `close()` kills whatever still runs
in the namespaces and deletes every namespace and link it made, also after a failure.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LOCK = Path("/tmp/pilotfish-netns.lock")
SUPERNET = ipaddress.IPv4Network("10.250.0.0/16")


class NetworkError(RuntimeError):
    """An `ip` command that failed, with its output."""


def ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its stdout, or NetworkError naming the command."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        try:
            used.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return [net for net in used if isinstance(net, ipaddress.IPv4Network)]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for subnet in SUPERNET.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in used if net.prefixlen > 0):
            return subnet
    raise NetworkError(f"no free /24 left in {SUPERNET}")


@dataclass
class NetHost:
    """One test host: its namespace, address and the two ends of its link to the bridge."""

    name: str
    netns: str
    address: str
    outer: str  # veth end on the bridge, in the root namespace
    inner: str  # veth end inside the namespace

    @property
    def nsenter(self) -> list[str]:
        """Command prefix that runs a program in this host's network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def run(self, *command: str, timeout: float = 30.0) -> str:
        """Run a short command on this host; its stdout (NetworkError if it fails)."""
        result = subprocess.run([*self.nsenter, *command], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise NetworkError(f"{self.name}: {' '.join(command)}: {result.stderr.strip()}")
        return result.stdout

    def pids(self) -> list[int]:
        """Every process whose network namespace is this host's."""
        out = ip("netns", "pids", self.netns, check=False)
        return [int(pid) for pid in out.split() if pid.isdigit()]

    def link(self, up: bool) -> None:
        """Plug (up) or cut (down) the host's only link at the bridge: a network partition.

        The switch side goes down, as when a cable is pulled: the host loses carrier but
        keeps its address, so what runs on it still reaches its own listeners.
        """
        ip("link", "set", self.outer, "up" if up else "down")


class HostNetwork:
    """A bridge in the root namespace and one namespace per test host, each on one veth."""

    def __init__(self, names: Sequence[str]) -> None:
        self.token = secrets.token_hex(2)
        self.bridge = f"pf{self.token}br"
        self.hosts: list[NetHost] = []
        self._names = list(names)
        self.subnet: ipaddress.IPv4Network | None = None

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (.1)."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def open(self) -> HostNetwork:
        """Create the bridge, namespaces and links; everything made is undone on failure."""
        try:
            with LOCK.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # two runs must not pick the same subnet
                self.subnet = _free_subnet()
                ip("link", "add", self.bridge, "type", "bridge")
                ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for number, name in enumerate(self._names):
                self._add_host(name, str(self.subnet.network_address + 2 + number))
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, name: str, address: str) -> None:
        host = NetHost(name, f"pf{self.token}-{name}", address,
                       outer=f"pf{self.token}{name}", inner=f"pf{self.token}{name}i")
        ip("netns", "add", host.netns)
        self.hosts.append(host)
        ip("link", "add", host.outer, "type", "veth", "peer", "name", host.inner)
        ip("link", "set", host.inner, "netns", host.netns)
        ip("link", "set", host.outer, "master", self.bridge, "up")
        host.run("ip", "link", "set", "lo", "up")
        host.run("ip", "addr", "add", f"{address}/24", "dev", host.inner)
        host.run("ip", "link", "set", host.inner, "up")

    def kill_host(self, host: NetHost, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process running on the host at once; the pids signalled."""
        pids = host.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def close(self) -> None:
        """Kill what still runs in the namespaces, delete them, their links and the bridge."""
        for host in self.hosts:
            self.kill_host(host)
        deadline = time.monotonic() + 5.0
        while any(host.pids() for host in self.hosts) and time.monotonic() < deadline:
            time.sleep(0.05)
        for host in self.hosts:
            ip("link", "del", host.outer, check=False)
            ip("netns", "del", host.netns, check=False)
        self.hosts = []
        ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> HostNetwork:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()
