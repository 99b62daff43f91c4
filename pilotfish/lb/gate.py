"""A route's gate: admits clients within the limits, picks, dials, retries, counts, settles.

What a route decides, written once for both engines: the engine accepts a client and asks
the gate to admit it, dials the backend the gate picks, and reports how the dial and the
connection ended (the contract: engine.Gate).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pilotfish.catalog.interface import Snapshot
from pilotfish.config import HostPort
from pilotfish.lb.engine import Engine, Link, Listener, RouteStats
from pilotfish.lb.pickers import Picker, make_picker
from pilotfish.lb.pool import Backend, Pool
from pilotfish.lb.proxy_protocol import header
from pilotfish.lb.routes import Route
from pilotfish.lb.settings import LbSettings
from pilotfish.lb.shared import ALL, Cell, SharedCounts, route_key, turns_key

log = logging.getLogger(__name__)

_CONNECT_ERRORS = (OSError, asyncio.CancelledError)  # refused, unreachable, timed out


class Occupancy:
    """Connections open across every route (the global limit counts these), and whether the
    balancer is stopping: what every route's gate shares.

    With workers, `counts` holds every worker's counts (pilotfish.lb.shared): the limits and
    the pickers then see the whole machine, and `cell` is this worker's row of the total.
    """

    __slots__ = ("active", "stopping", "all_closed", "counts", "cell")

    def __init__(self, counts: SharedCounts | None = None) -> None:
        self.active = 0
        self.stopping = False
        self.all_closed = asyncio.Event()  # set when `active` drops to 0 while stopping
        self.counts = counts
        self.cell: Cell | None = counts.cell(ALL) if counts is not None else None

    def total(self) -> int:
        """Connections open across every route (and every worker)."""
        cell = self.cell
        return self.active if cell is None else cell.total()


class RouteGate:
    """One route's gate: its pool and picker, its limits and counters, its engine's listener.

    `on_drained` hears when a route that stopped accepting has seen its last connection end.
    """

    def __init__(self, route: Route, settings: LbSettings, occupancy: Occupancy,
                 on_drained: Callable[[RouteGate], None]) -> None:
        self.route = route
        self.settings = settings
        self.occupancy = occupancy
        self.on_drained = on_drained
        counts = occupancy.counts
        self.pool = Pool(settings, counts, route.key)
        self.turns: Cell | None = counts.cell(turns_key(route.key)) \
            if counts is not None and occupancy.cell is not None else None
        self.picker: Picker = make_picker(route.balance, self.turns)
        self.connections: set[Link] = set()
        self.cell: Cell | None = counts.cell(route_key(route.key)) \
            if counts is not None and occupancy.cell is not None else None
        self.stats = RouteStats()
        self.address = route.listen
        self.listener: Listener | None = None
        self.accepting = False

    async def open(self, engine: Engine) -> None:
        """Bind the route's listen address on `engine` and start accepting (OSError: not
        bound)."""
        listener = engine.listener(self)
        address = await listener.start()
        self.listener = listener
        self.accepting = True
        self.address = HostPort(address[0], address[1])
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
            self.picker = make_picker(route.balance, self.turns)
        log.info("lb route %s changed to %s", old.key, route)

    def update(self, snapshot: Snapshot) -> None:
        """Feed the pool the route's instances from a new catalog snapshot."""
        self.pool.update(snapshot.service(self.route.service, self.route.tag))

    def stop_accepting(self) -> None:
        """Close the listening sockets; connections already open carry on."""
        self.accepting = False
        if self.listener is not None:
            self.listener.stop()
        self.pool.close()
        if not self.connections:
            self._release()

    def _release(self) -> None:
        """Give back the shared rows (workers): the route is gone and has no connection."""
        self.pool.release()
        counts, cell, turns = self.occupancy.counts, self.cell, self.turns
        if counts is not None and cell is not None:
            self.cell = None
            counts.release(cell)
        if counts is not None and turns is not None:
            self.turns = None
            counts.release(turns)

    def refuse(self, reason: str) -> None:
        """Count a client turned away (limit, no instance, every connect failed)."""
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1

    def admit(self, connection: Link) -> bool:
        """Within the global and the route's connection limits? Then track it and connect."""
        occupancy = self.occupancy
        limit = self.route.max_connections
        if not self.accepting or occupancy.stopping:
            self.refuse("stopping")
            return False
        cell = self.cell
        if cell is None:
            if occupancy.active >= self.settings.max_connections or \
                    (limit and len(self.connections) >= limit):
                self.refuse("limit")
                return False
        elif occupancy.total() >= self.settings.max_connections or \
                (limit and cell.total() >= limit):  # every worker's connections count
            self.refuse("limit")
            return False
        else:
            cell.add(1)
            occupancy.cell.add(1)  # type: ignore[union-attr]  # both or neither
        occupancy.active += 1
        self.connections.add(connection)
        self.stats.accepted += 1
        route = self.route
        if route.balance == "hash" or route.proxy_protocol:
            connection.learn_addresses()
        self.connect(connection)
        return True

    def connect(self, connection: Link) -> None:
        """Start connecting to the backend the picker picks; none left: refuse the client."""
        tried = connection.tried
        if len(tried) <= self.settings.retries:
            peer = connection.peername
            backend = self.picker.pick(self.pool.candidates(), peer[0] if peer else "", tried)
            if backend is not None:
                if tried:
                    self.stats.retries += 1
                backend.add(1)
                connection.dial(backend, self.settings.connect_timeout)
                return
        self.refuse("no_instance" if not tried else "connect_failed")
        connection.refuse()

    def failed(self, connection: Link, backend: Backend, error: BaseException) -> None:
        """A connect failed (or the client left while it ran): retry on another instance."""
        backend.add(-1)
        if connection.closed:  # the client left while we connected
            return
        if not isinstance(error, _CONNECT_ERRORS):
            log.error("lb: connect to %s failed: %r", backend.name, error)
        self.pool.connect_failed(backend)
        if not connection.tried:
            connection.tried = []
        connection.tried.append(backend)
        self.connect(connection)

    def connected(self, connection: Link, backend: Backend, alive: bool = True) -> bytes | None:
        """The backend connection is up: count it; the bytes to send it first (the PROXY
        header, or b""), or None when the client left meanwhile (the caller closes it)."""
        backend.total += 1
        self.pool.connect_succeeded(backend)
        if connection.closed or not alive:
            backend.add(-1)
            return None
        proxy_protocol = self.route.proxy_protocol
        if proxy_protocol:
            return header(proxy_protocol, connection.peername, connection.sockname)
        return b""

    def finished(self, connection: Link) -> None:
        """A connection ended: release its counters and its place in the limits."""
        self.connections.discard(connection)
        occupancy = self.occupancy
        occupancy.active -= 1
        if self.cell is not None:
            self.cell.add(-1)
            occupancy.cell.add(-1)  # type: ignore[union-attr]  # both or neither
        if occupancy.stopping and not occupancy.active:
            occupancy.all_closed.set()
        backend = connection.backend
        if backend is not None:
            backend.add(-1)
            moved = connection.moved()
            if moved is not None:
                backend.bytes_in += moved[0]
                backend.bytes_out += moved[1]
            backend.connections.discard(connection)
            if backend.draining and not backend.connections:
                self.pool.forget(backend)
        if not self.accepting and not self.connections:
            self._release()
            self.on_drained(self)
