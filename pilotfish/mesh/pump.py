"""The mesh's engine: tunnels of one plain and one TLS socket, on one epoll set of its own.

Not asyncio's TLS: it copies through memory buffers and cannot resume a client session.
Here OpenSSL reads and writes the (non-blocking) socket itself, and a client tunnel offers
the session its last handshake to that address left (resumed: no signatures to make or check).
The set is level-triggered, watched by the event loop as one reader; a side is watched for
what it waits on. OpenSSL may hold decrypted bytes the kernel no longer signals, so a TLS
read goes on to "want read", and a tunnel that yields its turn, or whose peer drains, is
resumed by the pump itself. A plain EOF becomes a TLS close_notify and the reverse; a TLS
stream cut without close_notify (a truncation) resets both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import ssl
from collections.abc import Callable

from pilotfish.lb.refuse import reset_on_close
from pilotfish.mesh import closing
from pilotfish.mesh.tunnel import Side, Tunnel

log = logging.getLogger(__name__)

IN, OUT, ERR, HUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
CHUNK = 64 << 10  # bytes moved per read and per TLS write (four records)
FAIR_SHARE = 8  # chunks one tunnel moves before the others' events are handled
BATCH = 256
WANTS = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Pump:
    """The epoll set every mesh tunnel of a process lives in, and the tunnels' lifecycles."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handshake_timeout: float = 5.0,
                 idle_timeout: float = 300.0) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.sides: dict[int, Side] = {}
        self.acceptors: dict[int, Callable[[], None]] = {}
        self.tunnels: set[Tunnel] = set()
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.buffer = bytearray(CHUNK)
        self.view = memoryview(self.buffer)
        self.resets = 0
        self.handshake_failures = 0
        self._doomed: list[socket.socket] = []
        loop.add_reader(self.epoll.fileno(), self.run)
        self._sweeper = loop.call_later(1.0, self.sweep)

    def close_all(self) -> None:
        """Close every tunnel and stop watching the set."""
        for tunnel in list(self.tunnels):
            self.close(tunnel, reset=True)
        self._sweeper.cancel()
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    # -- sockets in the set -------------------------------------------------------------

    def listen(self, sock: socket.socket, on_ready: Callable[[], None]) -> None:
        """Watch a listening socket; `on_ready` accepts."""
        self.acceptors[sock.fileno()] = on_ready
        self.epoll.register(sock.fileno(), IN)

    def unlisten(self, sock: socket.socket) -> None:
        """Stop watching a listening socket (before it is closed)."""
        if self.acceptors.pop(sock.fileno(), None) is not None:
            self.epoll.unregister(sock.fileno())

    def adopt(self, tunnel: Tunnel, sock: socket.socket, stage: str, client: bool) -> Side:
        """Make `sock` (non-blocking) one side of `tunnel` and watch it."""
        side = Side(tunnel, sock, stage)
        if client:
            tunnel.client = side
        else:
            tunnel.server = side
        self.tunnels.add(tunnel)
        self.sides[side.fd] = side
        self.epoll.register(side.fd, 0)
        self.watch(side)
        return side

    def watch(self, side: Side) -> None:
        """Watch the side for what it waits on now."""
        if side.stage == "connect":
            mask = OUT
        elif side.stage == "handshake":
            mask = OUT if side.want_out else IN
        elif side.stage == "wait":
            mask = 0
        else:
            peer = side.peer
            reading = not side.eof and peer is not None and peer.pending is None \
                and not peer.closing
            mask = (IN if reading else 0) | (OUT if side.pending is not None or side.closing
                                              or side.want_out else 0)
        if mask != side.mask:
            side.mask = mask
            self.epoll.modify(side.fd, mask)

    # -- the loop's reader ---------------------------------------------------------------

    def run(self) -> None:
        """Handle what the set has ready."""
        sides = self.sides
        try:
            for fd, mask in self.epoll.poll(0, BATCH):
                side = sides.get(fd)
                if side is None:
                    accept = self.acceptors.get(fd)
                    if accept is not None:
                        accept()
                    continue
                tunnel = side.tunnel
                if tunnel is None or tunnel.closed:
                    continue
                try:
                    self.event(side, mask)
                except Exception:  # a bug costs one tunnel, not the batch
                    log.exception("mesh: error on a tunnel; closing it")
                    self.close(tunnel, reset=True)
        finally:
            self._close_doomed()

    def event(self, side: Side, mask: int) -> None:
        """One socket's readiness."""
        tunnel = side.tunnel
        assert tunnel is not None
        if side.stage == "connect":
            code = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code or mask & (ERR | HUP):
                code = code or errno.ECONNREFUSED
                self.discard(side)
                if tunnel.server is side:
                    tunnel.server = None
                tunnel.owner.dialed(tunnel, OSError(code, os.strerror(code)))
            else:
                tunnel.owner.dialed(tunnel, None)
            return
        if side.stage == "handshake":
            self.handshake(side)
            return
        if mask & ERR or (side.stage == "wait" and mask & HUP):
            self.reset(tunnel)
            return
        if mask & OUT:
            if side.want_out and side.peer is not None:
                side.want_out = False
                self.move(side, side.peer)
                if tunnel.closed:
                    return
            if side.pending is not None or side.closing:
                self.flush(side)
                if tunnel.closed:
                    return
        if mask & (IN | HUP) and side.peer is not None:
            self.move(side, side.peer)

    # -- TLS handshakes --------------------------------------------------------------------

    def start_tls(self, side: Side, context: ssl.SSLContext, server_side: bool,
                  server_hostname: str | None = None,
                  session: ssl.SSLSession | None = None) -> None:
        """Wrap a connected side in TLS and begin its handshake (`session`: one of `context`'s
        to resume)."""
        # The `_ssl` connection itself, not an SSLSocket: that wrapper costs a dozen Python
        # calls and several system calls per connection, and adds frames to every read.
        side.tls = context._wrap_socket(  # type: ignore[attr-defined]
            side.sock, server_side, server_hostname, owner=side, session=session)
        side.secure, side.stage = True, "handshake"
        self.handshake(side)

    def handshake(self, side: Side) -> None:
        """One step of a handshake; the owner hears when it is done."""
        tunnel = side.tunnel
        assert tunnel is not None
        try:
            side.tls.do_handshake()
        except ssl.SSLWantReadError:
            side.want_out = False
            self.watch(side)
            return
        except ssl.SSLWantWriteError:
            side.want_out = True
            self.watch(side)
            return
        except (ssl.SSLError, OSError) as exc:
            self.handshake_failures += 1
            log.debug("mesh: handshake with %s failed: %s", tunnel.peername, exc)
            if tunnel.server is side and tunnel.owner is not None:
                self.discard(side)
                tunnel.server = None
                tunnel.owner.dialed(tunnel, OSError(errno.EPROTO, f"TLS: {exc}"[:200]))
                return
            self.close(tunnel, reset=True)
            return
        side.want_out = False
        side.stage = "wait"
        self.watch(side)
        tunnel.owner.handshaken(tunnel)

    # -- dialling ----------------------------------------------------------------------------

    def dial(self, tunnel: Tunnel, address: str, port: int) -> None:
        """Start connecting the tunnel's server side; the owner hears `dialed`."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((address, port))
        except OSError as exc:
            code = exc.errno or errno.EINVAL
        if code and code != errno.EINPROGRESS:
            sock.close()
            tunnel.owner.dialed(tunnel, OSError(code, os.strerror(code)))
            return
        self.adopt(tunnel, sock, "connect", client=False)

    def join(self, tunnel: Tunnel) -> None:
        """Both sides are up: carry bytes both ways."""
        client, server = tunnel.client, tunnel.server
        assert client is not None and server is not None
        client.peer, server.peer = server, client
        client.stage = server.stage = "open"
        self.watch(client)
        self.watch(server)
        if client.secure:
            self.move(client, server)  # bytes OpenSSL already holds raise no event
        if server.secure and not tunnel.closed:
            self.move(server, client)

    # -- moving bytes ------------------------------------------------------------------------

    def move(self, src: Side, dst: Side) -> None:
        """Read `src` into `dst` until `src` has nothing more or `dst` has no room."""
        tunnel = src.tunnel
        assert tunnel is not None
        budget = FAIR_SHARE
        while dst.pending is None and not dst.closing and not src.eof:
            if not budget:  # others' turn; a plain socket signals again, TLS may not
                if src.secure:
                    self.loop.call_soon(self._again, src, dst)
                break
            budget -= 1
            count, eof = self.read(src)
            if count < 0:
                self.reset(tunnel)
                return
            if count:
                src.received += count
                data = bytes(self.view[:count])
                if not self.write(dst, data):
                    if tunnel.closed:
                        return
                    break
            if eof:
                self.ended(src, dst)
                return
            if count < CHUNK:
                break
        if not tunnel.closed:
            self.watch(src)
            self.watch(dst)

    def _again(self, src: Side, dst: Side) -> None:
        if src.tunnel is not None and not src.tunnel.closed and src.peer is dst:
            self.move(src, dst)

    def read(self, side: Side) -> tuple[int, bool]:
        """Read up to CHUNK bytes: (count, EOF seen); count -1: the side failed."""
        view = self.view
        if not side.secure:
            try:
                count = side.sock.recv_into(view, CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return 0, False
            except OSError:
                return -1, False
            return count, count == 0
        read = side.tls.read
        count = 0
        while count < CHUNK:  # gather several records into one write to the plain side
            try:
                got = read(CHUNK - count, view[count:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                side.want_out = True
                break
            except ssl.SSLZeroReturnError:
                return count, True
            except ssl.SSLEOFError:  # cut without close_notify: truncated, unless the peer
                if closing.AVAILABLE:  # cannot send one (then a FIN is its half-close)
                    return (count if count else -1), False
                return count, True
            except (ssl.SSLError, OSError):  # the next read fails again, and resets
                return (count if count else -1), False
            if not got:
                return count, True
            count += got
        return count, False

    def write(self, side: Side, data: bytes) -> bool:
        """Send all of `data`, or keep the rest for later (False)."""
        try:
            sent = side.tls.write(data) if side.secure else \
                side.sock.send(data, socket.MSG_DONTWAIT)
        except WANTS:
            sent = 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            tunnel = side.tunnel
            if tunnel is not None:
                self.reset(tunnel)
            return False
        if sent == len(data):
            return True
        # TLS retries the very same bytes; plain sends what is left
        side.pending = data if side.secure else data[sent:]
        return False

    def flush(self, side: Side) -> None:
        """Room again: send what waited, then the close_notify, then read the peer again."""
        pending = side.pending
        if pending is not None:
            side.pending = None
            if not self.write(side, pending):
                if side.tunnel is not None and not side.tunnel.closed:
                    self.watch(side)
                return
        if side.closing:
            self.shut_down(side)
            if side.closing or side.tunnel is None or side.tunnel.closed:
                return
        peer = side.peer
        if peer is None:
            return
        if peer.eof:  # pass the end on, or close once both ways are done
            self.ended(peer, side)
        else:
            self.move(peer, side)

    def ended(self, src: Side, dst: Side) -> None:
        """`src` reached its end: pass it on to `dst`, or close when both ways are done."""
        src.eof = True
        tunnel = src.tunnel
        assert tunnel is not None
        if dst.pending is None and not dst.shut:
            self.shut_down(dst)
        if tunnel.closed:
            return
        if dst.eof and dst.pending is None and src.pending is None and not dst.closing:
            self.close(tunnel, reset=False)
            return
        self.watch(src)
        self.watch(dst)

    def shut_down(self, side: Side) -> None:
        """Close our write side toward `side`: a close_notify on TLS, a FIN on plain."""
        side.closing = False
        if side.secure:
            sent = closing.send_close_notify(side.tls)
            if sent == closing.WAIT:
                side.closing = True
                if side.tunnel is not None:
                    self.watch(side)
                return
            if sent == closing.FAILED and not closing.AVAILABLE:
                with contextlib.suppress(OSError):
                    side.sock.shutdown(socket.SHUT_WR)
        else:
            with contextlib.suppress(OSError):  # gone: its event follows
                side.sock.shutdown(socket.SHUT_WR)
        side.shut = True

    # -- the end -----------------------------------------------------------------------------

    def reset(self, tunnel: Tunnel) -> None:
        """A side failed: count it and close both, with a reset to the plain side."""
        if not tunnel.closed:
            self.resets += 1
        self.close(tunnel, reset=True)

    def close(self, tunnel: Tunnel, reset: bool) -> None:
        """Close a tunnel's sockets; its owner hears `ended` (once)."""
        if tunnel.closed:
            return
        tunnel.closed = True
        self.tunnels.discard(tunnel)
        tunnel.owner.ended(tunnel)  # its sockets still open: a TLS session can be kept
        for side in (tunnel.client, tunnel.server):
            if side is not None:
                if reset and not side.secure:
                    reset_on_close(side.sock)
                self.discard(side)

    def discard(self, side: Side) -> None:
        """Stop watching a side and close its socket (after the batch)."""
        side.tunnel = None
        side.peer = None
        if self.sides.get(side.fd) is side:
            del self.sides[side.fd]
            try:
                self.epoll.unregister(side.fd)
            except OSError:
                pass
        self._doomed.append(side.sock)
        if len(self._doomed) == 1:
            self.loop.call_soon(self._close_doomed)

    def _close_doomed(self) -> None:
        for sock in self._doomed:
            sock.close()
        self._doomed.clear()

    def sweep(self) -> None:
        """Once a second: close tunnels whose handshake or dial ran out of time, and idle ones."""
        self._sweeper = self.loop.call_later(1.0, self.sweep)
        now = self.loop.time()
        ticks = max(1, int(self.idle_timeout)) if self.idle_timeout > 0 else 0
        for tunnel in list(self.tunnels):
            client, server = tunnel.client, tunnel.server
            opened = client is not None and client.stage == "open"
            if not opened:
                if now - tunnel.born > self.handshake_timeout:
                    self.handshake_failures += 1
                    self.close(tunnel, reset=True)
                continue
            moved = (client.received if client else 0) + (server.received if server else 0)
            tunnel.idle = tunnel.idle + 1 if moved == tunnel.seen else 0
            tunnel.seen = moved
            if ticks and tunnel.idle >= ticks:
                self.close(tunnel, reset=False)
