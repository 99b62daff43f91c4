"""The HTTP listeners' own accept loop, so a listener out of file descriptors still answers.

An event loop that runs out of descriptors in accept() either closes the newcomer unanswered
(uvloop) or stops accepting for a second and logs a traceback (asyncio): the client sees an
empty reply, and nothing is counted. Here one descriptor is held in reserve: when accept()
fails with EMFILE/ENFILE, the reserve is let go, the newcomer accepted, told 503, and closed,
and the reserve taken back. The listener counts it and says so in the log (rate-limited).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

from pilotfish.http.errors import error_body
from pilotfish.http.limits import Listener

log = logging.getLogger(__name__)

OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BATCH = 64  # connections accepted per wake-up, so one listener cannot starve the loop
PAUSE = 0.1  # seconds accepting rests when even the reserve descriptor is gone
_BODY = error_body("unavailable", "out of file descriptors; try again")
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY))


def bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` names (as asyncio's create_server does)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _refuse(connection: socket.socket) -> None:
    """Say 503 and close, having read what arrived (closing on unread input would reset)."""
    with connection, contextlib.suppress(OSError):
        connection.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            connection.recv(65536)
        connection.send(REFUSAL)
        connection.shutdown(socket.SHUT_WR)


def _reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class Acceptor:
    """Accepts on a listener's sockets and hands each connection to a new protocol.

    It stands where uvicorn expects an asyncio.Server (`sockets`, `close`, `wait_closed`).
    """

    def __init__(self, sockets: list[socket.socket], protocol: Callable[[], asyncio.Protocol],
                 listener: Listener) -> None:
        self.sockets = sockets
        self._protocol = protocol
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._reserve = _reserve()
        self._starting: set[asyncio.Task[object]] = set()
        self._closed = False

    def start(self) -> None:
        """Begin accepting."""
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_FILES:
                    self._refuse_without_files(sock, exc)
                else:
                    log.warning("%s: accept failed: %s", self._listener.what, exc)
                    self._rest(sock)
                return
            self._serve(connection)

    def _serve(self, connection: socket.socket) -> None:
        connection.setblocking(False)
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(self._protocol, connection))
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[object]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s: a new connection failed: %r", self._listener.what,
                        task.exception())

    def _refuse_without_files(self, sock: socket.socket, error: OSError) -> None:
        """Answer 503 to what waits in the backlog, on the reserve descriptor."""
        for _ in range(BATCH):
            self._listener.out_of_files(error)
            if self._reserve is None:  # taken by something else meanwhile: try again shortly
                self._reserve = _reserve()
                self._rest(sock)
                return
            os.close(self._reserve)
            self._reserve = None
            try:
                connection, _ = sock.accept()
            except OSError:
                self._reserve = _reserve()
                return
            _refuse(connection)
            self._reserve = _reserve()
            try:  # anyone else waiting, and still no descriptor for them?
                connection, _ = sock.accept()
            except OSError as exc:
                if exc.errno not in OUT_OF_FILES:
                    return
                error = exc
                continue
            self._serve(connection)
            return

    def _rest(self, sock: socket.socket) -> None:
        """Stop accepting on `sock` for PAUSE seconds (a persistent accept error)."""
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(PAUSE, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting; close the sockets and the connections that never got to HTTP."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self._listener.close_unserved()

    async def wait_closed(self) -> None:
        """Wait for connections being set up at close."""
        if self._starting:
            await asyncio.wait(self._starting)
