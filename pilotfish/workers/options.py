"""The one `--workers` flag (`up`, `dns`, `lb`) and the process's one Supervisor."""

from __future__ import annotations

import argparse
import os
from typing import cast

from pilotfish.config import ConfigError, env
from pilotfish.stack import Stack
from pilotfish.workers.supervisor import Supervisor

MAX_WORKERS = 1024


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--workers N, with its PILOTFISH_WORKERS fallback."""
    parser.add_argument("--workers", type=int,
                        default=env("workers", str(default_workers())),
                        help="processes serving DNS and the LB, sharing their ports "
                             "(SO_REUSEPORT); 1 serves them in this process (default: the "
                             "cores this process may use) [PILOTFISH_WORKERS]")


def worker_count(args: argparse.Namespace) -> int:
    """The validated --workers value (1 where the command has no such flag)."""
    count = int(getattr(args, "workers", 1))
    if not 1 <= count <= MAX_WORKERS:
        raise ConfigError(f"--workers: {count} is not within 1-{MAX_WORKERS}")
    return count


def supervisor(stack: Stack) -> Supervisor | None:
    """The process's Supervisor (made on first use), or None when serving in-process."""
    if stack.workers <= 1:
        return None
    if stack.supervisor is None:
        stack.supervisor = Supervisor(stack.view(), stack.workers, stack.metrics)
    return cast(Supervisor, stack.supervisor)
