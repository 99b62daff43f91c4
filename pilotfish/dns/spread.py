"""The parent's side of DNS on `--workers N`: pick the port, hand the workers the server,
sum what they count. The parent itself never answers a query."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterable
from typing import Any

from pilotfish.catalog.view import ViewReader
from pilotfish.config import HostPort
from pilotfish.dns.stats import QUERIES, RECORDS, STALE, DnsStats
from pilotfish.dns.worker import DnsConfig
from pilotfish.metrics import Metrics, Sample
from pilotfish.ui.reports import DnsReport
from pilotfish.workers.part import WorkerSpec
from pilotfish.workers.supervisor import Supervisor

log = logging.getLogger(__name__)


class DnsWorkers:
    """DNS served by every worker on one port (SO_REUSEPORT); a `pilotfish` component."""

    def __init__(self, config: DnsConfig, supervisor: Supervisor, view: ViewReader) -> None:
        self.config = config
        self.supervisor = supervisor
        self.view = view
        self.address = config.listen
        self._reserved: list[socket.socket] = []
        supervisor.add(WorkerSpec("dns", "pilotfish.dns.worker:build", self.worker_config,
                                  on_ready=self._serving))

    def worker_config(self) -> DnsConfig:
        """What each worker builds its server from: the flags, with the port picked."""
        return dataclasses.replace(self.config, listen=self.address)

    async def start(self) -> None:
        """Hold the port until the workers do (port 0: pick one free for UDP and TCP)."""
        listen = self.config.listen
        for attempt in range(20):
            try:
                self._reserved = _reserve(listen.host, listen.port)
                break
            except OSError:
                if listen.port or attempt == 19:
                    raise
        self.address = HostPort(listen.host, self._reserved[0].getsockname()[1])

    def _serving(self) -> None:
        self._release()
        log.info("dns listening on udp://%s and tcp://%s for domain %s (%d workers)",
                 self.address, self.address, self.config.settings.domain,
                 self.supervisor.count)

    def _release(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved = []

    async def stop(self) -> None:
        """The workers stop with the supervisor; let go of the port if still held."""
        self._release()

    def open_files_needed(self) -> int:
        """The port held while the workers bind it (UDP and TCP, each family), not theirs."""
        return 4

    def samples(self) -> Iterable[Sample]:
        """The workers' DNS series summed, staleness from the parent's view."""
        for name, labels, value in self.supervisor.samples("dns"):
            if name != STALE:
                yield name, labels, value
        yield STALE, (), 1.0 if self.view.stale else 0.0

    def describe(self, metrics: Metrics) -> None:
        """Add the DNS series (summed over the workers) to the process's registry."""
        DnsStats().describe(metrics, self.samples)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the view is current, as a single-process server says."""
        stale = self.view.stale
        return not stale, {"status": "stale" if stale else "ok",
                           "index": self.view.snapshot.index}

    def report(self) -> DnsReport:
        """What the status UI shows: answers by rcode summed over the workers."""
        answers: dict[str, int] = {}
        names = 0
        for name, labels, value in self.supervisor.samples("dns"):
            if name == QUERIES:
                rcode = dict(labels)["rcode"]
                answers[rcode] = answers.get(rcode, 0) + int(value)
            elif name == RECORDS:
                names = int(value)
        return DnsReport(listen=str(self.address), domain=self.config.settings.domain,
                         answers=answers, names=names, stale=self.view.stale)


def _reserve(host: str, port: int) -> list[socket.socket]:
    """UDP and TCP sockets bound with SO_REUSEPORT on host:port (TCP not listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(family, kind)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return sockets
