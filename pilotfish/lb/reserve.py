"""The parent's engine with workers: it holds each route's port and carries nothing.

With `--workers N` the workers accept a route's clients, each on its own socket bound with
SO_REUSEPORT. The parent binds the route's address first, with SO_REUSEPORT too but without
listening: a route it cannot bind is refused at once (409 in the routes API, an error at
start), exactly as without workers, and while the parent holds it no other program can take
the port from a worker that is restarting. A socket that does not listen is never handed a
client, so every connection goes to a worker.
"""

from __future__ import annotations

import socket
from typing import Any

from pilotfish.lb.engine import Gate


class Reservation:
    """A route's address, bound and held but not listened on."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.sock: socket.socket | None = None

    async def start(self) -> tuple[Any, ...]:
        """Bind the route's listen address (OSError: it cannot be); the address bound."""
        listen = self.gate.route.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listen.host, listen.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return tuple(sock.getsockname())

    def stop(self) -> None:
        """Let the port go (the route was removed: the workers close theirs too)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class ReserveEngine:
    """The parent's engine with workers: reservations only (see the module's docstring)."""

    def listener(self, gate: Gate) -> Reservation:
        """A reservation of the gate's route address."""
        return Reservation(gate)

    def close(self) -> None:
        """Nothing to stop: the reservations close with their routes."""
