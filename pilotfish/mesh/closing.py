"""Half-closing a TLS connection: send our close_notify once, and keep reading.

Python's `SSLSocket.unwrap()` calls OpenSSL's SSL_shutdown twice; the second call waits for
the peer's close_notify and throws away the application data that arrives meanwhile. A
tunnel half-closes while the other direction still carries data, so it must call
SSL_shutdown exactly once. Python offers no such call: this module makes it through ctypes,
on the SSL pointer of CPython's `_ssl._SSLSocket` object (the field after the socket weakref),
after checking once, at import, that the pointer found is the one Python uses (it answers
SSL_is_server as the object it came from). Where that check fails the tunnel falls back to a
TCP half-close (FIN, no close_notify), and readers accept an EOF without close_notify.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import struct
from typing import Any

log = logging.getLogger(__name__)

SENT, WAIT, FAILED = "sent", "wait", "failed"
_WANT_WRITE = 3  # SSL_ERROR_WANT_WRITE
_OFFSET = struct.calcsize("P") * 3  # PyObject_HEAD (refcount, type), then PyObject *Socket


def _library() -> Any:
    try:
        library = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        for name, restype in (("SSL_shutdown", ctypes.c_int), ("SSL_get_error", ctypes.c_int),
                              ("SSL_is_server", ctypes.c_int), ("ERR_clear_error", None)):
            function = getattr(library, name)
            function.restype = restype
        library.SSL_shutdown.argtypes = [ctypes.c_void_p]
        library.SSL_get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
        library.SSL_is_server.argtypes = [ctypes.c_void_p]
        return library
    except (OSError, AttributeError):
        return None


def _pointer(sslobj: object) -> int:
    return ctypes.c_void_p.from_address(id(sslobj) + _OFFSET).value or 0


def _self_check(library: Any) -> bool:
    """Whether the pointer found in `_ssl._SSLSocket` is its SSL (server and client alike)."""
    if library is None:
        return False
    try:
        for server_side in (False, True):
            protocol = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
            tls = ssl.SSLContext(protocol).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(),
                                                    server_side=server_side,
                                                    server_hostname=None)
            pointer = _pointer(tls._sslobj)  # type: ignore[attr-defined]
            if not pointer or library.SSL_is_server(pointer) != int(server_side):
                return False
    except Exception:  # any surprise means: do not touch it
        return False
    return True


_LIBRARY = _library()
AVAILABLE = _self_check(_LIBRARY)
if not AVAILABLE:
    log.warning("mesh: cannot send a lone TLS close_notify here; half-closes go as TCP FIN")


def send_close_notify(tls: Any) -> str:
    """Send our close_notify once on an `_ssl._SSLSocket` (what SSLSocket and SSLObject wrap):
    SENT, WAIT (no room: call again when writable), or FAILED (AVAILABLE is False)."""
    if not AVAILABLE or tls is None:
        return FAILED
    pointer = _pointer(tls)
    result = _LIBRARY.SSL_shutdown(pointer)
    if result >= 0:
        return SENT
    error = _LIBRARY.SSL_get_error(pointer, result)
    _LIBRARY.ERR_clear_error()
    return WAIT if error == _WANT_WRITE else FAILED
