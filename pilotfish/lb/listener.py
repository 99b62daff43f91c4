"""One route's TCP listener: admits clients within the limits, connects them to a backend."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pilotfish.config import HostPort
from pilotfish.lb.balancers import Balancer, make_balancer
from pilotfish.lb.connect import Attempt
from pilotfish.lb.pool import Pool
from pilotfish.lb.proxy import Connection
from pilotfish.lb.proxy_protocol import header
from pilotfish.lb.refuse import refuse_now
from pilotfish.lb.routes import Route
from pilotfish.lb.settings import LbSettings
from pilotfish.registry.catalog import Snapshot

if TYPE_CHECKING:
    from pilotfish.lb.balancer import LoadBalancer

log = logging.getLogger(__name__)

_CONNECT_ERRORS = (OSError, asyncio.CancelledError)  # refused, unreachable, timed out


class RouteStats:
    """Per-route counters (per-instance ones live on each Backend)."""

    __slots__ = ("accepted", "refused", "retries", "resets")

    def __init__(self) -> None:
        self.resets = [0, 0]  # connections reset by the client, by the backend
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.retries = 0


class RouteListener:
    """Listens for one route; each client gets a backend picked by the route's balancer."""

    def __init__(self, balancer: LoadBalancer, route: Route) -> None:
        self.owner = balancer
        self.settings: LbSettings = balancer.settings
        self.route = route
        self.pool = Pool(self.settings)
        self.picker: Balancer = make_balancer(route.balance)
        self.connections: set[Connection] = set()
        self.stats = RouteStats()
        self.address = route.listen
        self.server: asyncio.Server | None = None
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Bind the listen address (IPv4 or IPv6) and start accepting."""
        listen = self.route.listen
        self.server = await self._loop.create_server(
            lambda: Connection(self).client, listen.host, listen.port, reuse_address=True,
            backlog=4096)
        host, port = self.server.sockets[0].getsockname()[:2]
        self.address = HostPort(host, port)
        log.info("lb route to %s listening on tcp://%s (route %s)", self.route.service,
                 self.address, self.route)

    def reconfigure(self, route: Route, snapshot: Snapshot) -> None:
        """Take a changed route on the same address, keeping the listener (and its clients)."""
        old = self.route
        self.route = route
        if (route.service, route.tag) != (old.service, old.tag):
            self.pool.update(())  # the old service's backends drain
            self.pool.update(snapshot.service(route.service, route.tag))
        if route.balance != old.balance:
            self.picker = make_balancer(route.balance)
        log.info("lb route %s changed to %s", old.key, route)

    def update(self, snapshot: Snapshot) -> None:
        """Feed the pool the route's instances from a new catalog snapshot."""
        self.pool.update(snapshot.service(self.route.service, self.route.tag))

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already open carry on."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.pool.close()

    def refuse(self, reason: str) -> None:
        """Count a client turned away (limit, no instance, every connect failed)."""
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    def admit(self, connection: Connection) -> bool:
        """Within the global and the route's connection limits? Then track it."""
        owner = self.owner
        limit = self.route.max_connections
        if self.server is None or owner.stopping:
            self.refuse("stopping")
            return False
        if owner.active >= self.settings.max_connections or \
                (limit and len(self.connections) >= limit):
            self.refuse("limit")
            return False
        owner.active += 1
        self.connections.add(connection)
        self.stats.accepted += 1
        route = self.route
        if route.balance == "hash" or route.proxy_protocol:
            transport = connection.client.transport
            if transport is not None:
                connection.peername = transport.get_extra_info("peername")
                connection.sockname = transport.get_extra_info("sockname")
        self.connect(connection)
        return True

    def connect(self, connection: Connection) -> None:
        """Start connecting to the backend the balancer picks; none left: refuse the client."""
        tried = connection.tried
        if len(tried) <= self.settings.retries:
            peer = connection.peername
            backend = self.picker.pick(self.pool.candidates(), peer[0] if peer else "", tried)
            if backend is not None:
                if tried:
                    self.stats.retries += 1
                backend.active += 1
                attempt = Attempt(self, connection, backend, self._loop,
                                  self.settings.connect_timeout)
                connection.attempt = attempt
                attempt.step()
                return
        self.refuse("no_instance" if not tried else "connect_failed")
        if connection.client.transport is not None:
            refuse_now(connection.client.transport)

    def failed(self, attempt: Attempt, error: BaseException) -> None:
        """A connect failed (or the client left while it ran): retry on another instance."""
        connection = attempt.connection
        connection.attempt = None
        backend = attempt.backend
        backend.active -= 1
        if connection.closed:  # the client left while we connected
            if attempt.server.transport is not None:
                attempt.server.transport.abort()
            return
        if not isinstance(error, _CONNECT_ERRORS):
            log.error("lb: connect to %s failed: %r", backend.name, error)
        self.pool.connect_failed(backend)
        if not connection.tried:
            connection.tried = []
        connection.tried.append(backend)
        self.connect(connection)

    def connected(self, attempt: Attempt) -> None:
        """The backend connection is up: join it to the client, PROXY header first."""
        connection = attempt.connection
        connection.attempt = None
        backend = attempt.backend
        backend.total += 1
        self.pool.connect_succeeded(backend)
        server = attempt.server
        transport = server.transport
        if connection.closed or transport is None or transport.is_closing():
            backend.active -= 1
            if transport is not None:
                transport.close()
            return
        proxy_protocol = self.route.proxy_protocol
        if proxy_protocol:
            transport.write(header(proxy_protocol, connection.peername, connection.sockname))
        connection.attach(server, backend)

    def finished(self, connection: Connection) -> None:
        """A connection ended: release its counters and its place in the limits."""
        self.connections.discard(connection)
        owner = self.owner
        owner.active -= 1
        if owner.stopping and not owner.active:
            owner.all_closed.set()
        attempt = connection.attempt
        if attempt is not None:
            attempt.cancel()
        backend = connection.backend
        if backend is not None:
            backend.active -= 1
            backend.bytes_in += connection.client.received
            backend.bytes_out += connection.server.received  # type: ignore[union-attr]
            backend.connections.discard(connection)
            if backend.draining and not backend.connections:
                self.pool.forget(backend)
        if self.server is None and not self.connections:
            self.owner.listener_drained(self)
