"""The cluster's catalog servers, one member on each test host: etcd or a ZooKeeper ensemble.

Each member runs in its host's namespace and listens on that host's address (fixed ports:
every host has an address of its own), so killing a host or cutting its link takes its member
with it, as on real machines. The classes reuse tests/fixtures/etcd.py and zookeeper.py.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Protocol

from tests.cluster.network import NetHost
from tests.fixtures.etcd import EtcdCluster, EtcdMember
from tests.fixtures.servers import HOST
from tests.fixtures.zookeeper import (
    CLASSPATH,
    JVM_FLAGS,
    QUORUM_MAIN,
    ZooKeeperServer,
    server_mode,
)

ETCD_CLIENT, ETCD_PEER = 2379, 2380
ZK_CLIENT, ZK_PEER, ZK_ELECTION = 2181, 2888, 3888


class ClusterBackend(Protocol):
    """What the harness needs from a backend: its members' URL, per-member stop and start."""

    scheme: str

    def start(self) -> object: ...

    def stop(self) -> None: ...

    def url(self, first: int) -> str: ...

    def stop_member(self, index: int, sig: int = signal.SIGTERM) -> None: ...

    def start_member(self, index: int) -> None: ...

    def serving(self, index: int) -> bool: ...


class HostEtcd(EtcdCluster):
    """A three-member etcd cluster, member i on test host i."""

    scheme = "etcd"

    def __init__(self, hosts: list[NetHost], base_dir: Path, pre_vote: bool = True) -> None:
        super().__init__(len(hosts), base_dir)
        self.net_hosts = hosts
        self.pre_vote = pre_vote
        for member, host in zip(self.members, hosts, strict=True):
            member.host, member.client_port, member.peer_port = \
                host.address, ETCD_CLIENT, ETCD_PEER

    def _command(self, member: EtcdMember) -> list[str]:
        host = self.net_hosts[self.members.index(member)]
        # Pre-vote: a member back from a partition must not depose the leader with the
        # terms it ran up alone (etcd 3.4 has it off by default; docs/multi-host.md).
        pre_vote = ["--pre-vote"] if self.pre_vote else []
        return [*host.nsenter, *super()._command(member), *pre_vote]

    def url(self, first: int = 0, prefix: str = "pilotfish") -> str:  # type: ignore[override]
        """etcd://… naming every member, host `first`'s own member first (it is tried first)."""
        order = self.members[first:] + self.members[:first]
        return "etcd://" + ",".join(m.endpoint for m in order) + "/" + prefix

    def start_member(self, index: int, wait: bool = True, timeout: float = 20.0) -> None:
        """Start (or restart, with its data) one member."""
        super().start_member(index, wait, timeout)

    def stop_member(self, index: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop one member; its data stays."""
        super().stop_member(index, sig, timeout)

    def serving(self, index: int) -> bool:
        """Whether member `index` answers and sees a leader."""
        return self.members[index].healthy()


class HostZooKeeperServer(ZooKeeperServer):
    """One ZooKeeper ensemble member on a test host's address, run in its namespace."""

    def __init__(self, host: NetHost, workdir: Path, myid: int, quorum: list[str]) -> None:
        super().__init__(workdir, ZK_CLIENT, myid, quorum)
        self.net_host = host

    @property
    def hosts(self) -> str:
        """host:port of this member's client port."""
        return f"{self.net_host.address}:{self.client_port}"

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config.read_text().replace(
            f"clientPortAddress={HOST}", f"clientPortAddress={self.net_host.address}")
        self.config.write_text(text)

    def spawn(self) -> None:
        """Start the JVM in the host's namespace without waiting for it to serve."""
        if self.running:
            return
        self._write_config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.net_host.nsenter, "java", *JVM_FLAGS, "-cp", CLASSPATH, QUORUM_MAIN,
                 str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def wait_serving(self, timeout: float = 30.0) -> str:
        """Wait until `srvr` on the host's address reports a mode; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"zookeeper exited ({self.process.returncode}); see {self.log}")
            mode = server_mode(self.client_port, host=self.net_host.address)
            if mode is not None:
                return mode
            time.sleep(0.05)
        raise RuntimeError(f"zookeeper on {self.hosts} not serving after {timeout}s; "
                           f"see {self.log}")


class HostZooKeeper:
    """A three-server ZooKeeper ensemble, server i on test host i."""

    scheme = "zk"

    def __init__(self, hosts: list[NetHost], base_dir: Path) -> None:
        quorum = [f"server.{n}={host.address}:{ZK_PEER}:{ZK_ELECTION}"
                  for n, host in enumerate(hosts, start=1)]
        self.servers = [HostZooKeeperServer(host, base_dir / f"zk{n}", n, quorum)
                        for n, host in enumerate(hosts, start=1)]

    def start(self, timeout: float = 60.0) -> HostZooKeeper:
        """Start every member and wait until all serve (a leader was elected)."""
        for server in self.servers:
            server.spawn()
        for server in self.servers:
            server.wait_serving(timeout)
        return self

    def stop(self) -> None:
        """Stop every member."""
        for server in self.servers:
            server.stop()

    def url(self, first: int = 0, chroot: str = "/pilotfish") -> str:
        """zk://… naming every member, host `first`'s own server first."""
        order = self.servers[first:] + self.servers[:first]
        return "zk://" + ",".join(server.hosts for server in order) + chroot

    def stop_member(self, index: int, sig: int = signal.SIGTERM) -> None:
        """Stop one server; its data stays."""
        self.servers[index].stop(sig)

    def start_member(self, index: int) -> None:
        """Start one server again and wait until it serves."""
        self.servers[index].start()

    def serving(self, index: int) -> bool:
        """Whether server `index` serves requests (it is in a quorum)."""
        server = self.servers[index]
        return server_mode(server.client_port, host=server.net_host.address) is not None
