"""The engine contract: what an engine is given for each route, and what it reports back.

An engine carries a route's connections: it binds the route's listen address, accepts
clients, dials the backend it is told to and moves the bytes both ways. Two implement this
contract: `epoll/` (raw sockets on one edge-triggered epoll set; Linux; the fast one) and
`transports/` (asyncio transports and protocols; any event loop). What a route decides (its
limits, its pool and picker, retries, the counters) is written once, for both, in the
route's gate (`gate.RouteGate`).

Given, per route, a `Gate`: the route (its listen address, PROXY protocol), its pool and
picker (the gate picks; an engine dials the backend it is told), the settings (timeouts,
limits, buffer sizes) and the route's counters.
Reported, through the `Gate`: every accepted client (`admit`; refused: reset it), every dial's
outcome (`connected` or `failed`), every admitted client's end (`finished`, once), resets
(`stats.resets`); and the bytes moved, read through each `Link` (`moved`).
"""

from __future__ import annotations

from typing import Any, Protocol

from pilotfish.config import HostPort
from pilotfish.lb.pickers import Picker
from pilotfish.lb.pool import Backend, BackendConnection, Pool
from pilotfish.lb.routes import Route
from pilotfish.lb.settings import LbSettings


class RouteStats:
    """A route's counters (per-instance ones live on each Backend); engines count resets."""

    __slots__ = ("accepted", "refused", "retries", "resets")

    def __init__(self) -> None:
        self.resets = [0, 0]  # connections reset by the client, by the backend
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.retries = 0


class Link(BackendConnection, Protocol):
    """One client connection and, once connected, its backend connection, as an engine
    carries it: what the gate, the pools and the idle sweep need of it."""

    closed: bool
    backend: Backend | None  # set once the backend connection is up
    tried: list[Backend] | tuple[()]  # backends whose connect failed
    peername: Any  # read only when needed (hashing, PROXY header)
    sockname: Any
    idle: int  # idle sweeps in a row without data
    seen: int  # bytes moved as of the last idle sweep

    def learn_addresses(self) -> None:
        """Read the client's and the listener's addresses into peername and sockname."""

    def dial(self, backend: Backend, timeout: float) -> None:
        """Start connecting to `backend`; the gate hears `connected` or `failed`."""

    def refuse(self) -> None:
        """Reset the client: it was not served."""

    def abort(self) -> None:
        """Close both sockets now."""


class Gate(Protocol):
    """One route as an engine sees it: what the engine is given, and what it reports to."""

    route: Route  # the listen address to bind; proxy_protocol: whether to learn sockname
    pool: Pool  # the route's backends (the gate's: it picks from them)
    picker: Picker  # how it picks
    settings: LbSettings  # timeouts, limits, buffer sizes
    stats: RouteStats  # the engine counts resets here
    address: HostPort  # the address bound (for logs)
    accepting: bool  # False once the route is removed or the LB stops

    def admit(self, link: Link) -> bool:
        """A client was accepted: within the limits it is kept and dialled (True); else it was
        counted as refused and the engine resets it (False)."""

    def connected(self, link: Link, backend: Backend, alive: bool = True) -> bytes | None:
        """A dial succeeded: the bytes to send the backend first (the PROXY header, or b""),
        or None when the client left meanwhile (the engine closes the backend socket)."""

    def failed(self, link: Link, backend: Backend, error: BaseException) -> None:
        """A dial failed (or the client left while it ran): the gate retries or refuses."""

    def finished(self, link: Link) -> None:
        """An admitted client's connection ended (reported once): its counters settle."""


class Listener(Protocol):
    """A route's listening sockets, as one engine runs them."""

    async def start(self) -> tuple[Any, ...]:
        """Bind the route's listen address and accept clients; the address bound (OSError:
        it could not be bound, and nothing is left open)."""

    def stop(self) -> None:
        """Close the listening sockets; connections already open carry on."""


class Engine(Protocol):
    """What carries connections: the balancer starts one and asks it for each route's
    listener."""

    def listener(self, gate: Gate) -> Listener:
        """A listener for the gate's route, not yet bound."""

    def close(self) -> None:
        """Stop, once every connection it carried is gone."""
