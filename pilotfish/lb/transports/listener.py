"""A route's listener on the transports engine: asyncio's `create_server`, one
TransportConnection per client."""

from __future__ import annotations

import asyncio
from typing import Any

from pilotfish.lb.engine import Gate
from pilotfish.lb.transports.connection import TransportConnection


class TransportListener:
    """Accepts a route's clients through the event loop's server (IPv4 or IPv6)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[Any, ...]:
        """Bind the route's listen address and start accepting; the address bound."""
        gate = self.gate
        listen = gate.route.listen
        self.server = await asyncio.get_running_loop().create_server(
            lambda: TransportConnection(gate).client, listen.host, listen.port,
            reuse_address=True, reuse_port=gate.settings.reuse_port or None, backlog=4096)
        return tuple(self.server.sockets[0].getsockname())

    def stop(self) -> None:
        """Close the listening socket; connections already open carry on."""
        if self.server is not None:
            self.server.close()
            self.server = None

