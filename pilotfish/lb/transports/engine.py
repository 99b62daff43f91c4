"""The transports engine (any event loop): asyncio transports and protocols carry the bytes."""

from __future__ import annotations

from pilotfish.lb.engine import Gate
from pilotfish.lb.transports.listener import TransportListener


class TransportsEngine:
    """Carries each connection as a pair of transports; the event loop owns the sockets.

    Half-close shuts a socket's write side directly (`connection.shutdown_write`), not
    through uvloop's `write_eof()`, which aborted a process under connection churn.
    """

    def listener(self, gate: Gate) -> TransportListener:
        """A listener for the gate's route, not yet bound."""
        return TransportListener(gate)

    def close(self) -> None:
        """Nothing to release: the event loop's servers and transports close themselves."""
