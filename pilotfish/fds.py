"""The process's file descriptors: raise the open-files limit, and share it out at start so
that HTTP listeners refuse (503) before the process runs out.

A server started under systemd inherits a soft limit of 1,024 open files although the hard
limit allows far more: every server command raises the soft limit to the hard one. What that
allows is then shared: KEPT descriptors stay for the process itself (backend connections,
logs, the event loop), components that hold many (DNS over TCP, the LB's two per connection)
claim theirs, at most half of the rest, and the HTTP listeners split what remains.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

KEPT = 256  # for the process itself (a quarter of the limit when that is lower)


@runtime_checkable
class HoldsFiles(Protocol):
    """A component that holds many descriptors of its own (DNS TCP clients, LB connections)."""

    def open_files_needed(self) -> int:
        """How many descriptors it holds at most."""
        ...


@runtime_checkable
class SharesFiles(Protocol):
    """An HTTP listener, whose connection cap is sized to the descriptors it is given."""

    def share_open_files(self, files: int) -> None:
        """Keep within `files` descriptors."""
        ...


def _kernel_ceiling() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as nr_open:
            return int(nr_open.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _kernel_ceiling() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files: cannot raise the limit from %d to %d: %s", soft, wanted, exc)
            return soft
        log.info("open files: limit raised from %d to %d", soft, wanted)
        return wanted
    return wanted if soft == resource.RLIM_INFINITY else soft


def share_open_files(components: Iterable[object], limit: int) -> None:
    """Size each HTTP listener among `components` to its share of `limit` descriptors."""
    components = list(components)
    spare = limit - max(16, min(KEPT, limit // 4))
    claimed = sum(c.open_files_needed() for c in components if isinstance(c, HoldsFiles))
    rest = spare - min(claimed, spare // 2)
    listeners = [c for c in components if isinstance(c, SharesFiles)]
    for listener in listeners:
        listener.share_open_files(rest // len(listeners))
