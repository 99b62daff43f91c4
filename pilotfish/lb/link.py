"""What the listener, pools and sweeps need of one proxied connection, whatever carries it.

Two engines carry connections: asyncio transports (`proxy.py`, any event loop) and raw
sockets on an epoll set of the balancer's own (`fastpath.py`, Linux).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pilotfish.lb.pool import Backend


class Link(Protocol):
    """One client connection and, once connected, its backend connection."""

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
        """Start connecting to `backend`; the listener hears `connected` or `failed`."""

    def refuse(self) -> None:
        """Reset the client: it was not served."""

    def moved(self) -> tuple[int, int] | None:
        """Bytes read from the client and from the backend; None before the backend is up."""

    def close(self) -> None:
        """Close both sockets (what is queued is still sent)."""

    def abort(self) -> None:
        """Close both sockets now."""
