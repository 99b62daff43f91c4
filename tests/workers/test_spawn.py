"""Workers are spawned, never forked: a fork would run gRPC's atfork handlers in the child."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from pilotfish.workers.spawn import SpawnedProcess

FORKS: list[int] = []
os.register_at_fork(before=lambda: FORKS.append(os.getpid()))


async def test_a_worker_is_started_without_running_fork_handlers() -> None:
    FORKS.clear()
    process = SpawnedProcess.start([sys.executable, "-c", "pass"])
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert FORKS == []


async def test_the_event_loops_own_subprocesses_would_have_forked() -> None:
    """What the test above tells apart: uvloop's subprocess support forks."""
    FORKS.clear()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await process.wait()
    assert FORKS != []


async def test_its_exit_is_awaited_with_the_signal_that_ended_it() -> None:
    process = SpawnedProcess.start([sys.executable, "-c", "import time; time.sleep(30)"])
    waiting = asyncio.ensure_future(process.wait())
    await asyncio.sleep(0.2)
    assert not waiting.done() and process.returncode is None
    process.kill()
    assert await asyncio.wait_for(waiting, 10) == -signal.SIGKILL
    assert process.returncode == -signal.SIGKILL
    process.kill()  # reaped: its pid may be someone else's now, so nothing is sent
