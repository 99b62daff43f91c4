"""The last few warnings and errors a component logged, for its panel's "recent errors"."""

from __future__ import annotations

import collections
import logging

from pilotfish.ui.html import MAX_TEXT
from pilotfish.ui.reports import LogLine

KEPT = 20


class RecentLog(logging.Handler):
    """Keeps the last KEPT records at WARNING or above of one logger tree, each bounded."""

    def __init__(self, kept: int = KEPT) -> None:
        super().__init__(logging.WARNING)
        self._lines: collections.deque[LogLine] = collections.deque(maxlen=kept)

    @classmethod
    def attach(cls, logger_name: str) -> RecentLog:
        """A RecentLog listening to `logger_name` and its children (one per logger)."""
        logger = logging.getLogger(logger_name)
        for handler in logger.handlers:
            if isinstance(handler, cls):
                return handler
        recent = cls()
        logger.addHandler(recent)
        return recent

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self._lines.append(LogLine(at=record.created, level=record.levelname.lower(),
                                   message=message[:MAX_TEXT]))

    def lines(self) -> list[LogLine]:
        """The kept records, newest first."""
        return list(reversed(self._lines))
