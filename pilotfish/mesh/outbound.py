"""Outbound routes: a plain listener beside the apps for one upstream service, whose
connections go over TLS 1.3 to that service's inbound ports, presenting the source service's
certificate and checking that the other end is the upstream service (its SPIFFE ID).

Each route is an LB route gate (`lb.gate.RouteGate`): the same limits, picker, passive
ejection, retries on another instance and counters as the plain balancer, over the mesh's
pump instead of an LB engine. Its pool holds only the instances registered behind an inbound
port (meta `mtls`); a TLS session per inbound port is kept and resumed.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import InvalidField, service_name
from pilotfish.config import ConfigError, HostPort
from pilotfish.lb.engine import Gate
from pilotfish.lb.gate import Occupancy, RouteGate
from pilotfish.lb.pool import Backend
from pilotfish.lb.routes import BALANCES, InvalidRoute, Route, parse_listen
from pilotfish.lb.settings import LbSettings
from pilotfish.mesh.identities import Identities
from pilotfish.mesh.identity import server_name
from pilotfish.mesh.pump import Pump
from pilotfish.mesh.tunnel import Tunnel, accept, listening

log = logging.getLogger(__name__)

MESH_META = "mtls"  # an instance behind an inbound port carries mtls=1
ACCEPT_BATCH = 64
SESSIONS_KEPT = 4_096
SESSION_REFRESH = 60.0  # seconds a kept session is offered before a newer one replaces it


@dataclass(frozen=True, slots=True)
class Upstream:
    """`LISTEN=DESTINATION?as=SOURCE[&balance=…]`: apps reach DESTINATION at LISTEN, and the
    mesh speaks for them as SOURCE."""

    listen: HostPort
    destination: str
    source: str
    balance: str = "p2c"

    @classmethod
    def parse(cls, text: str, flag: str = "--mesh-upstream") -> Upstream:
        """Read one flag value; ConfigError naming the flag and the part at fault."""
        listen_text, equals, rest = text.partition("=")
        target, _, query = rest.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = sorted(set(options) - {"as", "balance"})
        try:
            if not equals or not target:
                raise ConfigError("give LISTEN=SERVICE?as=SOURCE (127.0.0.1:9000=db?as=web)")
            if unknown:
                raise ConfigError(f"unknown option(s) {', '.join(unknown)} (known: as, balance)")
            if "as" not in options:
                raise ConfigError("?as=SOURCE is required: the service this host speaks as")
            balance = options.get("balance", "p2c")
            if balance not in BALANCES:
                raise ConfigError(f"balance must be one of {', '.join(BALANCES)}")
            return cls(parse_listen(listen_text), service_name(target, "service"),
                       service_name(options["as"], "as"), balance)
        except InvalidRoute as exc:
            raise ConfigError(f"{flag} {text!r}: {exc.message}") from None
        except InvalidField as exc:
            raise ConfigError(f"{flag} {text!r}: {exc.field}: {exc.message}") from None
        except ConfigError as exc:
            raise ConfigError(f"{flag} {text!r}: {exc}") from None


class MeshGate(RouteGate):
    """An LB route gate whose pool holds only the destination's instances in the mesh."""

    def update(self, snapshot: Snapshot) -> None:
        """Feed the pool the destination's instances behind an inbound port."""
        self.pool.update(i for i in snapshot.service(self.route.service)
                         if i.meta.get(MESH_META) == "1")


class OutboundTunnel(Tunnel):
    """A tunnel the route's gate dials through (an LB `Link`)."""

    __slots__ = ("listener", "admitted")

    def __init__(self, pump: Pump, listener: UpstreamListener, peername: Any) -> None:
        super().__init__(pump, listener, peername)
        self.listener = listener
        self.admitted = False

    def learn_addresses(self) -> None:
        """The client's address came with accept."""

    def dial(self, backend: Backend, timeout: float) -> None:
        """Connect to the backend's inbound port; the TLS handshake follows."""
        self.dial_backend = backend
        self.pump.dial(self, backend.address, backend.port)  # type: ignore[attr-defined]

    def refuse(self) -> None:
        """Reset the client: it was not served."""
        self.pump.close(self, reset=True)


class UpstreamListener:
    """One upstream's plain listener and the owner of its tunnels."""

    def __init__(self, gate: MeshGate, upstream: Upstream, pump: Pump,
                 identities: Identities, sessions: OrderedDict[Any, Any]) -> None:
        self.gate = gate
        self.upstream = upstream
        self.pump = pump
        self.identities = identities
        self.sessions = sessions
        self.sock: socket.socket | None = None
        self.verify_failures = 0
        self.resumed = 0  # handshakes that resumed a kept TLS session

    async def start(self) -> tuple[Any, ...]:
        """Bind the listen address and accept."""
        listen = self.upstream.listen
        sock = listening(listen.host, listen.port)
        self.sock = sock
        self.pump.listen(sock, self._accept)
        return tuple(sock.getsockname())

    def stop(self) -> None:
        """Stop accepting."""
        if self.sock is not None:
            self.pump.unlisten(self.sock)
            self.sock.close()
            self.sock = None

    def _accept(self) -> None:
        sock = self.sock
        for _ in range(ACCEPT_BATCH):
            if sock is None:
                return
            try:
                accepted = accept(sock)
            except OSError:
                return
            if accepted is None:
                return
            client, peer = accepted
            tunnel = OutboundTunnel(self.pump, self, peer)
            self.pump.adopt(tunnel, client, "wait", client=True)
            tunnel.admitted = True
            if not self.gate.admit(tunnel):
                tunnel.admitted = False
                self.pump.close(tunnel, reset=True)

    # -- the tunnel's owner ----------------------------------------------------------------

    def dialed(self, tunnel: Tunnel, error: OSError | None) -> None:
        """Connected to an inbound port: start TLS as the source service (or let the gate
        retry another instance)."""
        assert isinstance(tunnel, OutboundTunnel)
        backend = tunnel.dial_backend
        if error is not None or tunnel.closed:
            tunnel.dial_backend = None
            self.gate.failed(tunnel, backend, error or ConnectionAbortedError())
            return
        context = self.identities.client_context(self.upstream.source)
        if context is None:  # no certificate yet for the service we speak as
            tunnel.dial_backend = None
            self.gate.refuse("no_certificate")
            self.pump.close(tunnel, reset=True)
            return
        key = (backend.address, backend.port)
        kept = self.sessions.get(key)
        session = kept[1] if kept is not None and kept[0] is context else None
        server = tunnel.server
        assert server is not None
        self.pump.start_tls(server, context, server_side=False, session=session,
                            server_hostname=server_name(self.upstream.destination,
                                                        self.identities.domain))

    def handshaken(self, tunnel: Tunnel) -> None:
        """The server proved an identity: the destination's carries the bytes, any other is
        refused like a failed dial."""
        assert isinstance(tunnel, OutboundTunnel)
        backend = tunnel.dial_backend
        server = tunnel.server
        assert backend is not None and server is not None
        tls = server.tls
        if self.identities.peer(tls) != self.upstream.destination:
            self.verify_failures += 1
            log.warning("mesh: %s answered for %s is not %s; refused", backend.name,
                        self.identities.peer(tls), self.upstream.destination)
            self.pump.discard(server)
            tunnel.server = None
            tunnel.dial_backend = None
            self.gate.failed(tunnel, backend,
                             OSError(errno.EPROTO, "the server is not the expected service"))
            return
        tunnel.dial_backend = None
        if tls.session_reused:
            self.resumed += 1
        first = self.gate.connected(tunnel, backend)
        if first is None:
            self.pump.close(tunnel, reset=False)
            return
        tunnel.backend = backend
        backend.connections.add(tunnel)
        self.pump.join(tunnel)

    def ended(self, tunnel: Tunnel) -> None:
        """Keep the TLS session for the next handshake; settle the gate's counters."""
        server = tunnel.server
        if server is not None and server.secure and tunnel.backend is not None:
            self._keep_session(tunnel.backend, server.tls)
        if isinstance(tunnel, OutboundTunnel) and tunnel.admitted:
            tunnel.admitted = False
            if tunnel.dial_backend is not None:  # the client left, or time ran out, mid-dial
                backend, tunnel.dial_backend = tunnel.dial_backend, None
                self.gate.failed(tunnel, backend, ConnectionAbortedError())
            self.gate.finished(tunnel)


    def _keep_session(self, backend: Backend, tls: Any) -> None:
        """Keep the TLS session the connection left, for the next handshake to resume; a
        session kept is reused until it is SESSION_REFRESH old (tickets stay valid longer)."""
        key = (backend.address, backend.port)
        kept = self.sessions.get(key)
        now = self.pump.loop.time()
        if kept is not None and kept[0] is tls.context and now - kept[2] < SESSION_REFRESH:
            return
        session = tls.session
        if session is not None and session.has_ticket:
            self.sessions[key] = (tls.context, session, now)
            self.sessions.move_to_end(key)
            if len(self.sessions) > SESSIONS_KEPT:
                self.sessions.popitem(last=False)


class OutboundRoutes:
    """Every upstream of this host: one gate and listener each, fed by the catalog view."""

    def __init__(self, pump: Pump, identities: Identities, upstreams: list[Upstream],
                 settings: LbSettings | None = None) -> None:
        self.pump = pump
        self.identities = identities
        self.upstreams = upstreams
        self.settings = settings or LbSettings()
        self.occupancy = Occupancy()
        self.gates: list[MeshGate] = []
        self.sessions: OrderedDict[Any, Any] = OrderedDict()

    async def start(self, snapshot: Snapshot) -> None:
        """Bind every upstream's listener (ConfigError when one cannot be)."""
        for upstream in self.upstreams:
            route = Route(upstream.listen, upstream.destination, balance=upstream.balance,
                          origin="--mesh-upstream")
            gate = MeshGate(route, self.settings, self.occupancy, lambda _: None)
            gate.update(snapshot)
            try:
                await gate.open(_Engine(self, upstream))
            except OSError as exc:
                raise ConfigError(f"--mesh-upstream {route}: cannot listen: "
                                  f"{exc.strerror or exc}") from exc
            self.gates.append(gate)

    def update(self, snapshot: Snapshot) -> None:
        """A new catalog snapshot: each pool follows its destination's mesh instances."""
        for gate in self.gates:
            gate.update(snapshot)

    def stop(self) -> None:
        """Stop accepting."""
        for gate in self.gates:
            gate.stop_accepting()


class _Engine:
    """What `RouteGate.open` asks for: a listener for its route."""

    def __init__(self, routes: OutboundRoutes, upstream: Upstream) -> None:
        self.routes = routes
        self.upstream = upstream

    def listener(self, gate: Gate) -> UpstreamListener:
        """The upstream's listener, for its gate."""
        assert isinstance(gate, MeshGate)
        return UpstreamListener(gate, self.upstream, self.routes.pump,
                                self.routes.identities, self.routes.sessions)

    def close(self) -> None:
        """Nothing of its own to close: the pump carries the tunnels."""


