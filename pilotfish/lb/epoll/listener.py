"""A route's listener on the epoll engine: its listening sockets in the epoll set, and
accept4 until the backlog is empty."""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any

from pilotfish.lb.engine import Gate
from pilotfish.lb.epoll.connection import EpollConnection
from pilotfish.lb.epoll.poller import IN, STREAM, Poller
from pilotfish.lb.refuse import reset_on_close

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # clients accepted per wake-up of one listener


class EpollListener:
    """Accepts a route's clients on raw sockets; each is admitted by the gate or reset."""

    def __init__(self, gate: Gate, poller: Poller) -> None:
        self.gate = gate
        self.poller = poller
        self.sockets: list[socket.socket] = []
        self._loop = asyncio.get_running_loop()

    async def start(self) -> tuple[Any, ...]:
        """Bind the listen address (every address a name resolves to), start accepting; the
        address bound."""
        listen = self.gate.route.listen
        infos = await self._loop.getaddrinfo(listen.host or None, listen.port, type=STREAM,
                                             flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.gate.settings.reuse_port:  # workers: the kernel spreads the clients
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted ones inherit
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(4096)
                sock.setblocking(False)
        except OSError:
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            raise
        for sock in self.sockets:
            self.poller.listeners[sock.fileno()] = self
            self.poller.epoll.register(sock.fileno(), IN)
        return tuple(self.sockets[0].getsockname())

    def stop(self) -> None:
        """Close the listening sockets; connections already open carry on."""
        poller = self.poller
        for sock in self.sockets:
            fd = sock.fileno()
            if poller.listeners.pop(fd, None) is not None:
                with contextlib.suppress(OSError):  # not registered while accept is paused
                    poller.epoll.unregister(fd)
            sock.close()
        self.sockets = []

    def accept_ready(self, fd: int) -> None:
        """Accept every waiting client (up to a batch); each is admitted or reset."""
        sock = next((s for s in self.sockets if s.fileno() == fd), None)
        if sock is None:
            return
        accept = sock._accept  # type: ignore[attr-defined]
        family = sock.family
        gate = self.gate
        admit = gate.admit
        poller = self.poller
        for _ in range(ACCEPT_BATCH):
            try:
                client_fd, peername = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                self._accept_failed(sock, exc)
                return
            client = _socket.socket(family, STREAM, 0, client_fd)
            connection = EpollConnection(gate, poller, client, peername)
            try:
                if not admit(connection):
                    connection.closed = True
                    reset_on_close(client)
                    client.close()
                elif not connection.closed:
                    poller.adopt(connection.client)
            except Exception:  # e.g. no memory for epoll: this client, not the listener
                log.exception("lb: could not take a client on %s; closing it", gate.address)
                if connection.closed:
                    client.close()
                else:
                    poller.drop(connection)

    def _accept_failed(self, sock: socket.socket, exc: OSError) -> None:
        if exc.errno in (errno.ECONNABORTED, errno.EPERM, errno.EPROTO):
            return  # that client gave up; the listener is fine
        log.error("lb: accept on %s failed: %s; pausing it for 1s", self.gate.address, exc)
        fd = sock.fileno()
        self.poller.epoll.unregister(fd)
        self._loop.call_later(1.0, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if self.gate.accepting and sock in self.sockets:
            self.poller.epoll.register(sock.fileno(), IN)
