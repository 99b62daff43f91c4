"""One probe of one check, as Consul judges it: an HTTP GET (2xx passing, 429 warning, anything
else critical), a TCP connect, or a script in the container (exit 0 passing, 1 warning,
anything else critical). Every probe ends within its timeout and says what it saw.

HTTP is spoken by hand (HTTP/1.0, one request per connection, at most 2 * OUTPUT_BYTES read,
on an asyncio protocol): a probe costs a connect, one write and a few callbacks, which keeps
200 checks a second cheap.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from pilotfish.catalog.model import MAX_CHECK_OUTPUT, Check, Health

OUTPUT_BYTES = MAX_CHECK_OUTPUT  # what a check keeps of its output
"""What a probe keeps of what it read (Consul keeps 4 KB of check output)."""

ScriptRunner = Callable[[str, str, float], Awaitable[tuple[int, str]]]
"""(container id, shell command, timeout) → (exit code, output): `docker exec`."""


@dataclass(frozen=True, slots=True)
class Result:
    """What one probe found."""

    status: Health
    output: str


_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def _tls(verify: bool) -> ssl.SSLContext:
    context = _CONTEXTS.get(verify)
    if context is None:
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        _CONTEXTS[verify] = context
    return context


def http_status(code: int) -> Health:
    """Consul's verdict on an HTTP status code."""
    if 200 <= code < 300:
        return "passing"
    return "warning" if code == 429 else "critical"


def exit_status(code: int) -> Health:
    """Consul's verdict on a script's exit code."""
    return "passing" if code == 0 else "warning" if code == 1 else "critical"


async def probe(check: Check, container_id: str, script: ScriptRunner | None) -> Result:
    """Run one check once, within its timeout; never raises (a failure is critical)."""
    timeout = check.timeout or check.interval or 10.0
    try:
        if check.kind in ("http", "https"):
            async with asyncio.timeout(timeout):
                return await _http(check.target)
        if check.kind == "tcp":
            async with asyncio.timeout(timeout):
                return await _tcp(check.target)
        if check.kind == "script" and script is not None:
            code, output = await script(container_id, check.target, timeout)
            return Result(exit_status(code), output[:OUTPUT_BYTES])
    except TimeoutError:
        return Result("critical", f"{check.name}: timed out after {timeout:g}s")
    except (OSError, ValueError, ssl.SSLError) as exc:
        return Result("critical", f"{check.name}: {exc or type(exc).__name__}")
    return Result("critical", f"{check.name}: this sidecar cannot run {check.kind} checks")


class _Exchange(asyncio.Protocol):
    """One request written on connect; what comes back, up to 2 * OUTPUT_BYTES, until the
    server closes (HTTP/1.0). A protocol, not streams: a probe is a few callbacks."""

    def __init__(self, request: bytes, answer: asyncio.Future[bytes]) -> None:
        self.request = request
        self.answer = answer
        self.data = bytearray()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        cast(asyncio.WriteTransport, transport).write(self.request)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= 2 * OUTPUT_BYTES and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result(bytes(self.data))


async def _http(url: str) -> Result:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme != "http" else 80)
    tls = None if parts.scheme == "http" else _tls(parts.scheme == "https")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
               "User-Agent: pilotfish-check\r\nAccept: text/plain, */*\r\n"
               "Connection: close\r\n\r\n").encode("ascii")
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _Exchange(request, answer), host, port, ssl=tls,
        server_hostname=host if tls is not None else None)
    try:
        data = await answer
    finally:
        transport.close()
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if len(line) < 2 or not line[0].startswith("HTTP/") or not line[1].isdigit():
        return Result("critical", f"HTTP GET {_shown(url)}: not an HTTP answer")
    code, reason = int(line[1]), line[2] if len(line) > 2 else ""
    text = body[:OUTPUT_BYTES].decode("utf-8", "replace")
    return Result(http_status(code), f"HTTP GET {_shown(url)}: {code} {reason} Output: {text}")


def _shown(url: str) -> str:
    return url.replace("https+insecure://", "https://", 1)


async def _tcp(where: str) -> Result:
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.close()
    return Result("passing", f"TCP connect {where}: Success")
