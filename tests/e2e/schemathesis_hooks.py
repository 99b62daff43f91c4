"""Schemathesis hooks for tests/e2e/test_openapi.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis

from pilotfish.registry.api import WAIT_PATTERN, parse_wait

MAX_WAIT = 0.2  # seconds: a valid long-poll still blocks, but never holds the run for minutes


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Shorten valid `wait` durations; leave invalid ones for the server to refuse."""
    wait = (query or {}).get("wait")
    if isinstance(wait, str) and query is not None:
        try:
            too_long = parse_wait(wait) > MAX_WAIT
        except Exception:  # not a duration: a negative case, sent as generated
            too_long = False
        if too_long:
            query["wait"] = f"{int(MAX_WAIT * 1000)}ms"
    return query


__all__ = ["WAIT_PATTERN", "map_query"]
