"""Active health checks: a TCP connect to every backend each interval, with rise and fall."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pilotfish.lb.pool import Backend, Pool
from pilotfish.lb.settings import LbSettings

log = logging.getLogger(__name__)


async def tcp_check(address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to address:port opens within timeout."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(asyncio.Protocol, address, port)
    except (OSError, TimeoutError):
        return False
    transport.close()
    return True


def record(backend: Backend, ok: bool, settings: LbSettings) -> bool:
    """Count one check result; returns True when the backend's health verdict flipped."""
    if ok:
        backend.checks_failed = 0
        backend.checks_ok += 1
        if not backend.healthy and backend.checks_ok >= settings.rise:
            backend.healthy = True
            log.info("lb: %s is up (%d checks passed)", backend.name, backend.checks_ok)
            return True
    else:
        backend.checks_ok = 0
        backend.checks_failed += 1
        if backend.healthy and backend.checks_failed >= settings.fall:
            backend.healthy = False
            log.warning("lb: %s is down (%d checks failed)", backend.name,
                        backend.checks_failed)
            return True
    return False


def follow_registry(backend: Backend) -> bool:
    """A backend whose instance has registry checks takes their verdict (`serving`) instead
    of the LB's TCP connect, which a proxy in front of a dead app (docker-proxy) would pass;
    returns True when that restores one the connects had marked down."""
    if backend.healthy:
        return False
    backend.healthy, backend.checks_ok, backend.checks_failed = True, 0, 0
    log.info("lb: %s follows its registry checks, not the LB's TCP check", backend.name)
    return True


async def check_forever(pools: Callable[[], list[Pool]], settings: LbSettings) -> None:
    """Check every serving backend of every pool once per interval, all checks concurrently
    (those with registry checks excepted: the registry's verdict is theirs)."""
    while True:
        backends = {id(b): b for pool in pools() for b in pool.serving()}
        flipped = False
        targets = []
        for backend in backends.values():
            if backend.instance.checks:
                flipped |= follow_registry(backend)
            else:
                targets.append(backend)
        if targets:
            results = await asyncio.gather(*(tcp_check(b.address, b.port, settings.check_timeout)
                                             for b in targets))
            for backend, ok in zip(targets, results, strict=True):
                flipped |= record(backend, ok, settings)
        if flipped:
            for pool in pools():
                pool.version += 1
        await asyncio.sleep(settings.check_interval)
