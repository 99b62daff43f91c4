"""A parent with two real worker processes: the catalog and view here, DNS and a probe there."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rdatatype
import pytest

from pilotfish.catalog.backends import open_catalog
from pilotfish.catalog.interface import Catalog
from pilotfish.config import HostPort
from pilotfish.dns.spread import DnsWorkers
from pilotfish.dns.worker import DnsConfig
from pilotfish.dns.zone import ZoneSettings
from pilotfish.stack import Stack
from pilotfish.workers.part import WorkerSpec
from pilotfish.workers.supervisor import Supervisor

DOMAIN = "workers.test"


@dataclass
class Parent:
    """The parent process's side: what a test drives and reads."""

    catalog: Catalog
    stack: Stack
    supervisor: Supervisor
    dns: DnsWorkers
    reports: list[tuple[int, str, object]]

    @property
    def port(self) -> int:
        """The DNS port every worker serves."""
        return self.dns.address.port

    def ask(self, name: str, timeout: float = 1.0) -> dns.message.Message:
        """One UDP query from a fresh socket (a new source port: the kernel may pick any
        worker)."""
        query = dns.message.make_query(name, dns.rdatatype.A)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)  # dnspython's timeout only works on a non-blocking socket
            return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=timeout,
                                 sock=sock)


@pytest.fixture
async def parent() -> AsyncIterator[Parent]:
    """Two workers running DNS and the probe part, fed by a memory catalog's view."""
    catalog = await open_catalog("memory://")
    stack = Stack(catalog)
    view = stack.view()
    supervisor = Supervisor(view, 2, stack.metrics, grace=2.0)
    config = DnsConfig(HostPort("127.0.0.1", 0), ZoneSettings(domain=DOMAIN), (), 1232, (), None)
    server = DnsWorkers(config, supervisor, view)
    server.describe(stack.metrics)
    reports: list[tuple[int, str, object]] = []
    supervisor.add(WorkerSpec("probe", "tests.workers.probe:build", lambda: None,
                              on_report=lambda worker, kind, body: reports.append(
                                  (worker, kind, body))))
    await view.start()
    await server.start()
    await supervisor.start()
    try:
        yield Parent(catalog, stack, supervisor, server, reports)
    finally:
        await supervisor.stop()
        await server.stop()
        await view.stop()
        await catalog.close()
