"""A worker process started by posix_spawn and awaited without a child watcher.

Neither fork nor the event loop's subprocess support will do here: a fork runs the
parent's pthread_atfork handlers in the child (gRPC's, with an etcd:// catalog), and a
child can die there with SIGSEGV before it runs a line of ours. uvloop's subprocesses
fork through libuv, and the standard loop's go through a child watcher. `subprocess.Popen`
uses posix_spawn (a vfork-like clone, no atfork handlers) when given no `pass_fds`,
`close_fds=False`, no `cwd` and no new session, so that is what starts a worker, and a
pidfd tells the loop when it has exited.
"""

from __future__ import annotations

import asyncio
import os
import subprocess


class SpawnedProcess:
    """A child process: its pid, its exit code once known, and a way to await it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._exited = asyncio.get_running_loop().create_future()
        self._watch()

    @classmethod
    def start(cls, argv: list[str]) -> SpawnedProcess:
        """Spawn `argv`; the child inherits every inheritable fd, as posix_spawn requires."""
        return cls(subprocess.Popen(argv, close_fds=False))

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL, unless it has already been reaped (its pid may be someone else's)."""
        if self._popen.returncode is None:
            self._popen.kill()

    async def wait(self) -> int:
        """Its exit code (negative: the signal that ended it)."""
        return await asyncio.shield(self._exited)

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):  # no pidfds (Linux < 5.3): a thread waits
            waiting = loop.run_in_executor(None, self._popen.wait)
            waiting.add_done_callback(lambda done: self._reaped())
            return

        def readable() -> None:
            if self._popen.poll() is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                self._reaped()

        loop.add_reader(pidfd, readable)

    def _reaped(self) -> None:
        if not self._exited.done() and self._popen.returncode is not None:
            self._exited.set_result(self._popen.returncode)
