"""Refusing a client: a reset, so it knows at once that it was not served."""

from __future__ import annotations

import _socket
import asyncio
import socket

_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends RST


def reset_on_close(sock: _socket.socket) -> None:
    """Make the coming close send a reset instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


def refuse_now(transport: asyncio.Transport) -> None:
    """Turn a client away with a reset, so it knows at once it was not served."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        reset_on_close(sock)
    transport.abort()
