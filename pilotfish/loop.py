"""Runs the main coroutine on uvloop when available, with a switch back to the stdlib loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """asyncio.run on uvloop (unless disabled or missing)."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
