"""Schemathesis hooks for tests/e2e/test_openapi.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis

from pilotfish.http.errors import ApiError
from pilotfish.registry.bodies import parse_wait

SHORT_WAIT = "200ms"  # a valid long-poll still blocks, but never holds the run for minutes


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Shorten valid long-polls (an `index` alone waits 5 minutes); leave invalid `wait`s be."""
    if query is None or ("index" not in query and "wait" not in query):
        return query
    wait = query.get("wait")
    if wait is None:
        query["wait"] = SHORT_WAIT
    elif isinstance(wait, str):
        try:
            if parse_wait(wait) > parse_wait(SHORT_WAIT):
                query["wait"] = SHORT_WAIT
        except ApiError:
            pass  # not a duration: a negative case, sent as generated
    return query
