"""The LB's active TCP check gives way to the registry's checks: a port that accepts for a dead
app (docker-proxy) must not keep it in, and a port that refuses must not take out an instance
whose registry checks pass."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from pilotfish.catalog.model import Check, Instance
from pilotfish.lb.health import check_forever
from pilotfish.lb.pool import Pool
from pilotfish.lb.settings import LbSettings

SETTINGS = LbSettings(check_interval=0.05, check_timeout=0.5, rise=1, fall=1)


def _refusing_port() -> int:
    """A loopback port with nothing listening on it (connects are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _instance(name: str, port: int, status: str | None) -> Instance:
    checks = () if status is None else (Check("http", "HTTP /health", "http", status),)  # type: ignore[arg-type]
    return Instance(service="web", id=name, address="127.0.0.1", port=port, lease="l",
                    checks=checks)


async def _checked(pool: Pool, rounds: int = 4) -> None:
    task = asyncio.create_task(check_forever(lambda: [pool], SETTINGS))
    await asyncio.sleep(SETTINGS.check_interval * rounds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_refusing_port_takes_out_only_the_instance_without_registry_checks() -> None:
    pool = Pool(SETTINGS)
    pool.update([_instance("plain", _refusing_port(), None),
                 _instance("checked", _refusing_port(), "passing")])
    await _checked(pool)
    healthy = {b.instance.id: b.healthy for b in pool.backends.values()}
    assert healthy == {"plain": False, "checked": True}
    assert [b.instance.id for b in pool.candidates()] == ["checked"]


async def test_an_accepting_port_does_not_keep_an_instance_whose_check_is_critical() -> None:
    with socket.socket() as proxy:  # accepts every connection, as docker-proxy does
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(64)
        pool = Pool(SETTINGS)
        pool.update([_instance("dead-app", proxy.getsockname()[1], "critical")])
        await _checked(pool)
        assert pool.serving() == [] and pool.candidates() == []


async def test_registry_checks_restore_a_backend_the_tcp_check_marked_down() -> None:
    port = _refusing_port()
    pool = Pool(SETTINGS)
    pool.update([_instance("w1", port, None)])
    await _checked(pool)
    (backend,) = pool.backends.values()
    assert not backend.healthy
    pool.update([_instance("w1", port, "passing")])  # the sidecar now checks it
    version = pool.version
    await _checked(pool)
    assert backend.healthy and pool.candidates() == [backend] and pool.version > version
