"""A worker's warnings and errors, passed to the parent for its status pages.

A worker writes its log lines to the stderr it shares with the parent. The status UI's
"recent errors" are kept by handlers in the parent, so a worker also sends each record of
WARNING or above over its pipe, at most RATE a second, and the parent hands it to its own
handlers, except those writing to a stream (the worker's line is already there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

RATE = 20.0  # records a second a worker forwards (a status page keeps about that many)
MAX_MESSAGE = 500  # characters of a forwarded message

LogBody = tuple[str, int, float, str]
"""(logger name, level number, created, message) of one forwarded record."""


class ForwardedLogs(logging.Handler):
    """In a worker: sends each WARNING+ record to the parent, within a rate."""

    def __init__(self, send: Callable[[LogBody], None]) -> None:
        super().__init__(logging.WARNING)
        self._send = send
        self._tokens = RATE
        self._refilled = time.monotonic()
        self._dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        self._tokens = min(RATE, self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1:
            self._dropped += 1
            return
        self._tokens -= 1
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        message = message[:MAX_MESSAGE]
        if self._dropped:
            message += f" ({self._dropped} earlier lines only in this worker's log)"
            self._dropped = 0
        self._send((record.name, record.levelno, record.created, message))


def replay(worker: int, body: LogBody) -> None:
    """In the parent: a worker's record, to the parent's handlers that do not write a stream."""
    name, level, created, message = body
    record = logging.LogRecord(name, level, "", 0, message, None, None)
    record.created = created
    record.worker = worker
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        for handler in logger.handlers:
            if not isinstance(handler, logging.StreamHandler) and level >= handler.level:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None
