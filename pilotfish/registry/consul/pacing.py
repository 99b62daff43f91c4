"""Long computations on the event loop, cut into slices so DNS, the LB and other requests go on.

One event loop serves the registry API, DNS and the LB in `pilotfish up`: a request that makes
it compute for 100 ms delays every other client by 100 ms. Work over a big answer (every
instance of a service through a ?filter=, its JSON) runs in slices of about a millisecond with
the loop free in between, one answer at a time (ConsulApi._lane), so however many such requests
arrive, the loop is never held for more than about one slice.
"""

from __future__ import annotations

import asyncio
import time

SLICE = 0.001
"""Seconds of work between two turns of the loop."""


class OverBudget(Exception):
    """The work took more loop time than it was allowed."""

    def __init__(self, spent: float, budget: float) -> None:
        super().__init__(f"took more than {budget:g} s of CPU (stopped after {spent:.2f} s)")
        self.spent, self.budget = spent, budget


class Pacer:
    """Lets the loop run once a slice of work is done; optionally stops work past a budget.

    Call `due()` between steps (cheap) and `await pause()` when it says so. Slices are wall
    time (what other clients wait); the budget is this thread's CPU time between pauses, so
    neither other requests nor a busy machine use it up.
    """

    def __init__(self, budget: float | None = None, slice_seconds: float = SLICE) -> None:
        self.budget = budget
        self.slice = slice_seconds
        self.spent = 0.0
        self._resumed = time.perf_counter()
        self._cpu_resumed = time.thread_time()

    def due(self) -> bool:
        """Whether this slice is used up."""
        return time.perf_counter() - self._resumed >= self.slice

    async def pause(self) -> None:
        """Give the loop a turn; OverBudget once the work has taken more than the budget."""
        self.spent += time.thread_time() - self._cpu_resumed
        if self.budget is not None and self.spent > self.budget:
            raise OverBudget(self.spent, self.budget)
        await asyncio.sleep(0)
        self.resume()

    async def step(self) -> None:
        """Pause if the slice is used up (for loops: `await pacer.step()` per item)."""
        if self.due():
            await self.pause()

    def resume(self) -> None:
        """Start a fresh slice (after awaiting something else, e.g. a lock)."""
        self._resumed = time.perf_counter()
        self._cpu_resumed = time.thread_time()
