"""The inbound port: one TLS port per host for every mesh service on it. A client names the
service it wants (the TLS server name `<service>.svc.<trust domain>`) and proves its own
with its certificate; the intentions decide, and an allowed connection is carried to one of
that service's containers on this host, in plain TCP over the host's own network."""

from __future__ import annotations

import errno
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from pilotfish.config import HostPort
from pilotfish.lb.refuse import reset_on_close
from pilotfish.mesh.identities import Identities
from pilotfish.mesh.intentions import Intentions
from pilotfish.mesh.pump import Pump
from pilotfish.mesh.tunnel import Tunnel, accept, listening

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64
MAX_CONNECTIONS = 8_000  # open at once (handshaking ones too); beyond: reset at accept
Targets = Callable[[str], list[tuple[str, int]]]


@dataclass
class InboundStats:
    """What the inbound port counts, for /metrics."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    carried: int = 0
    closed_by_intentions: int = 0

    def refuse(self, reason: str) -> None:
        """Count a connection turned away."""
        self.refused[reason] = self.refused.get(reason, 0) + 1


class Inbound:
    """Terminates mutual TLS on one port and carries allowed connections to local containers."""

    def __init__(self, pump: Pump, listen: HostPort, identities: Identities,
                 allows: Callable[[str, str], bool], targets: Targets,
                 close_denied: bool = False, max_connections: int = MAX_CONNECTIONS) -> None:
        self.pump = pump
        self.listen = listen
        self.identities = identities
        self.allows = allows
        self.targets = targets
        self.close_denied = close_denied
        self.max_connections = max_connections
        self.live = 0  # accepted and not yet ended
        self.stats = InboundStats()
        self.sock: socket.socket | None = None
        self.open: set[Tunnel] = set()
        self._turn = itertools.count()

    @property
    def address(self) -> HostPort:
        """The address bound."""
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return HostPort(host, port)

    def start(self) -> HostPort:
        """Bind and accept (OSError when the port cannot be bound)."""
        sock = listening(self.listen.host, self.listen.port)
        self.sock = sock
        self.pump.listen(sock, self._accept)
        log.info("mesh inbound port listening on %s", self.address)
        return self.address

    def stop(self) -> None:
        """Stop accepting; open connections carry on until the pump closes."""
        if self.sock is not None:
            self.pump.unlisten(self.sock)
            self.sock.close()
            self.sock = None

    def _accept(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                accepted = accept(sock)
            except OSError as exc:
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    log.warning("mesh inbound: accept failed: %s", exc)
                return
            if accepted is None:
                return
            client, peer = accepted
            self.stats.accepted += 1
            if self.live >= self.max_connections:
                self.stats.refuse("limit")
                reset_on_close(client)
                client.close()
                continue
            self.live += 1
            tunnel = Tunnel(self.pump, self, peer)
            side = self.pump.adopt(tunnel, client, "wait", client=True)
            self.pump.start_tls(side, self.identities.listener, server_side=True)

    # -- the tunnel's owner ----------------------------------------------------------------

    def handshaken(self, tunnel: Tunnel) -> None:
        """Who is asking for what: refuse it, or dial a local container of the service."""
        side = tunnel.client
        assert side is not None
        destination = self.identities.served(side.tls)
        source = self.identities.peer(side.tls)
        if destination is None or source is None:
            self._refuse(tunnel, "no_identity")
            return
        tunnel.identity, tunnel.destination = source, destination
        if not self.allows(source, destination):
            self._refuse(tunnel, "denied")
            log.debug("mesh inbound: %s -> %s denied by the intentions", source, destination)
            return
        targets = self.targets(destination)
        if not targets:
            self._refuse(tunnel, "no_instance")
            return
        address, port = targets[next(self._turn) % len(targets)]
        self.pump.dial(tunnel, address, port)

    def dialed(self, tunnel: Tunnel, error: OSError | None) -> None:
        """The container answered (carry the bytes) or did not (refuse)."""
        if error is not None:
            self._refuse(tunnel, "connect_failed")
            return
        self.stats.carried += 1
        self.open.add(tunnel)
        self.pump.join(tunnel)

    def ended(self, tunnel: Tunnel) -> None:
        """A connection closed: it no longer counts against the limit."""
        self.live -= 1
        self.open.discard(tunnel)

    def _refuse(self, tunnel: Tunnel, reason: str) -> None:
        self.stats.refuse(reason)
        self.pump.close(tunnel, reset=True)

    def intentions_changed(self, intentions: Intentions) -> None:
        """With --mesh-close-denied, close open connections the new intentions deny."""
        if not self.close_denied:
            return
        for tunnel in list(self.open):
            if tunnel.identity and tunnel.destination and \
                    not intentions.allows(tunnel.identity, tunnel.destination):
                self.stats.closed_by_intentions += 1
                self.pump.close(tunnel, reset=True)
