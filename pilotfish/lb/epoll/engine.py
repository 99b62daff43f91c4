"""The epoll engine (Linux, the default): raw non-blocking sockets on one edge-triggered
epoll set of the balancer's, which the event loop watches as a single reader."""

from __future__ import annotations

import asyncio

from pilotfish.lb.engine import Gate
from pilotfish.lb.epoll.listener import EpollListener
from pilotfish.lb.epoll.poller import Poller


class EpollEngine:
    """One epoll set for every route: listeners and connections alike live in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.poller = Poller(loop)

    def listener(self, gate: Gate) -> EpollListener:
        """A listener for the gate's route, not yet bound."""
        return EpollListener(gate, self.poller)

    def close(self) -> None:
        """Stop watching the set; the connections are gone by now (the balancer aborted them)."""
        self.poller.close()
