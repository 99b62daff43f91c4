"""A worker process: `python -m pilotfish.workers.main FD [--log-level L] [--no-uvloop]`.

Started by the parent's Supervisor with one end of a socketpair as FD; it never opens the
catalog: the view arrives over the pipe (pilotfish/workers/__init__.py says how a component
runs here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from pilotfish.loop import run
from pilotfish.workers.channel import Channel
from pilotfish.workers.logs import ForwardedLogs
from pilotfish.workers.part import Factory, WorkerContext, WorkerPart
from pilotfish.workers.replica import ReplicaView

log = logging.getLogger(__name__)


class Worker:
    """The parts one worker runs, and what it does with each message from the parent."""

    def __init__(self) -> None:
        self.view = ReplicaView()
        self.parts: dict[str, WorkerPart] = {}
        self.channel: Channel | None = None
        self.done = asyncio.Event()

    def handle(self, kind: str, body: Any) -> Any:
        """One message from the parent (channel.py calls this, in order)."""
        if kind == "view":
            self.view.receive(body)
            return None
        if kind == "start":
            return self._start(body)
        if kind == "counters":
            return {name: list(part.samples()) for name, part in self.parts.items()}
        if kind == "part":
            name, what, value = body
            return self.parts[name].message(what, value)
        if kind == "sighup":
            for part in self.parts.values():
                part.message("sighup", None)
            return None
        if kind == "drain":
            return self._drain()
        raise ValueError(f"unknown message {kind!r}")

    async def _start(self, body: dict[str, Any]) -> int:
        index, count = body["index"], body["count"]
        self.view.receive(body["view"])
        for name, factory, config in body["parts"]:
            context = WorkerContext(index, count, self.view, self._reporter(name))
            part = _factory(factory)(config, context)
            await part.start()
            self.parts[name] = part
        return os.getpid()

    def _reporter(self, name: str) -> Any:
        def report(kind: str, body: Any) -> None:
            if self.channel is not None:
                self.channel.tell("report", (name, kind, body))
        return report

    async def _drain(self) -> None:
        await self.stop()
        self.done.set()

    async def stop(self) -> None:
        """Stop every part (gracefully: each drains what it has in flight)."""
        parts, self.parts = list(self.parts.values()), {}
        await asyncio.gather(*(part.stop() for part in reversed(parts)), return_exceptions=True)


def _factory(path: str) -> Factory:
    module, _, function = path.partition(":")
    built: Factory = getattr(importlib.import_module(module), function)
    return built


async def serve(fd: int) -> int:
    """Run until the parent says drain, or goes away."""
    worker = Worker()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.done.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the parent decides
    sock = socket.socket(fileno=fd)
    worker.channel = channel = await Channel.open(sock, worker.handle, worker.done.set)
    forwarded = ForwardedLogs(lambda body: channel.tell("log", body))
    logging.getLogger("pilotfish").addHandler(forwarded)
    await worker.done.wait()
    await worker.stop()
    await channel.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process."""
    parser = argparse.ArgumentParser(prog="pilotfish-worker")
    parser.add_argument("fd", type=int)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(OSError):
        os.setsid()  # the parent's Ctrl-C or SIGHUP to its group is the parent's to pass on
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[worker pid {os.getpid()}]: "
                               "%(message)s")
    return run(serve(args.fd), use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    sys.exit(main())
