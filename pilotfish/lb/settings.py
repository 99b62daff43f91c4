"""The balancer's tunables (timeouts, limits, health checking), shared by every route."""

from __future__ import annotations

import select
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LbSettings:
    """Timeouts in seconds; a limit or interval of 0 turns that feature off."""

    connect_timeout: float = 2.0
    idle_timeout: float = 300.0
    drain_timeout: float = 30.0
    stop_timeout: float = 10.0
    max_connections: int = 8_000
    retries: int = 2
    check_interval: float = 2.0
    check_timeout: float = 1.0
    rise: int = 2
    fall: int = 2
    eject_after: int = 2
    eject_base: float = 1.0
    eject_max: float = 30.0
    max_ejected: float = 0.5
    panic_below: float = 0.5
    high_water: int = 1 << 20  # bytes queued toward one side before the other is paused
    engine: str = "epoll" if hasattr(select, "epoll") else "transports"  # see engine.py
    reuse_port: bool = False  # workers: each binds every route with SO_REUSEPORT
