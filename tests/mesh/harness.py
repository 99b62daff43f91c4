"""Two mesh hosts in one process, on loopback: each a pump, its identities, an inbound port and
outbound routes; an echo backend; and a catalog snapshot that puts the backend's service
behind host B's inbound port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.config import HostPort
from pilotfish.mesh.identities import Identities
from pilotfish.mesh.inbound import Inbound
from pilotfish.mesh.intentions import Intention, Intentions
from pilotfish.mesh.outbound import OutboundRoutes, Upstream
from pilotfish.mesh.pump import Pump
from tests.mesh.pki import MeshPki


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_server(endings: list[str]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                  Awaitable[None]]:
    """An echo handler: every byte back; after the client's EOF, how many came, then close.
    `endings` gets "eof" or "reset" for each connection: how its request side ended."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        try:
            while data := await reader.read(65536):
                total += len(data)
                writer.write(data)
                await writer.drain()
            endings.append("eof")
            writer.write(f"\nbytes={total}\n".encode())
            await writer.drain()
        except ConnectionError:
            endings.append("reset")  # the client left without finishing: nothing to say
        finally:
            writer.close()

    return echo


@dataclass
class TwoHosts:
    """Host A (client side: outbound route to `db` as `web`) and host B (inbound for `db`)."""

    pki: MeshPki
    a: Identities
    b: Identities
    pump_a: Pump
    pump_b: Pump
    inbound: Inbound
    outbound: OutboundRoutes
    upstream: HostPort
    backend_port: int
    intentions: list[Intentions] = field(default_factory=list)
    endings: list[str] = field(default_factory=list)  # the backend's view of each end

    def allow(self, *rules: Intention, default: str = "deny") -> None:
        self.intentions[0] = Intentions(rules, default)  # type: ignore[arg-type]

    def snapshot(self, port: int | None = None) -> Snapshot:
        inbound = self.inbound.address
        return Snapshot(1, [Instance("db", "b:db:1", inbound.host, port or inbound.port,
                                     "lease", meta={"mtls": "1"})])


@contextlib.asynccontextmanager
async def two_hosts(pki: MeshPki) -> AsyncIterator[TwoHosts]:
    loop = asyncio.get_running_loop()
    endings: list[str] = []
    server = await asyncio.start_server(echo_server(endings), "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    a, b = Identities(pki.authority.trust_domain), Identities(pki.authority.trust_domain)
    for identities, service in ((a, "web"), (b, "db")):
        certificate, key = pki.identity(service)
        identities.install(service, certificate, key, pki.authority.pem, 0.0)
    pump_a, pump_b = Pump(loop), Pump(loop)
    intentions = [Intentions((Intention("web", "db", "allow"),))]
    inbound = Inbound(pump_b, HostPort("127.0.0.1", 0), b,
                      lambda s, d: intentions[0].allows(s, d),
                      lambda service: [("127.0.0.1", backend_port)]
                      if service in ("db", "cache") else [])
    inbound.start()
    upstream = HostPort("127.0.0.1", free_port())
    outbound = OutboundRoutes(pump_a, a, [Upstream(upstream, "db", "web")])
    hosts = TwoHosts(pki, a, b, pump_a, pump_b, inbound, outbound, upstream, backend_port,
                     intentions, endings)
    await outbound.start(hosts.snapshot())
    try:
        yield hosts
    finally:
        outbound.stop()
        inbound.stop()
        pump_a.close_all()
        pump_b.close_all()
        server.close()
        await server.wait_closed()
