"""The registry API's last resort: a failure no handler expected becomes a 500 and one short line.

A traceback per failed request is a disk-filling vector: one 4 KB request that ended in a
RecursionError logged 205 KB. Whatever escapes the handlers is answered with a JSON 500
(`{"error", "code": "internal"}`) and logged as ONE line of bounded size: the exception's type,
its message cut short, and the innermost few frames.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType

from starlette.types import Message, Receive, Scope, Send

from pilotfish.http.errors import error_body
from pilotfish.http.middleware import Middleware

log = logging.getLogger(__name__)

MAX_MESSAGE = 200
MAX_PATH = 120
FRAMES = 4
MAX_FRAMES_WALKED = 100_000  # a traceback is a linked list; walk it without recursion, bounded


def _innermost(tb: TracebackType | None) -> list[str]:
    """`file:line function` of the innermost FRAMES frames, innermost first."""
    last: list[TracebackType] = []
    walked = 0
    while tb is not None and walked < MAX_FRAMES_WALKED:
        last.append(tb)
        if len(last) > FRAMES:
            last.pop(0)
        tb, walked = tb.tb_next, walked + 1
    return [f"{os.path.basename(t.tb_frame.f_code.co_filename)}:{t.tb_lineno} "
            f"{t.tb_frame.f_code.co_name}" for t in reversed(last)]


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit} chars)"


def failure_line(scope: Scope, exc: BaseException) -> str:
    """One log line about an unexpected failure: bounded whatever the exception holds."""
    try:
        message = str(exc)
    except Exception:  # a __str__ that fails too
        message = "<unprintable>"
    path = _short(str(scope.get("path", "")), MAX_PATH)
    return (f"unexpected {type(exc).__name__} answering {scope.get('method', '?')} {path!r}: "
            f"{_short(message, MAX_MESSAGE)!r} at {' <- '.join(_innermost(exc.__traceback__))}")


INTERNAL_BODY = error_body("internal", "internal error: the registry logged what failed")


class LastResort(Middleware):
    """Answers 500 JSON for any exception that escapes the app, and logs it in one line."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error("%s", failure_line(scope, exc))
            if not started:  # else the client gets a cut-short answer: nothing more to send
                await send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(INTERNAL_BODY)).encode())]})
                await send({"type": "http.response.body", "body": INTERNAL_BODY})
