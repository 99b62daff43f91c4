"""ZooKeeper layout and settings: node paths, what a node holds, the zk:// URL."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import urllib.parse
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import (
    ConnectionDropped,
    ConnectionLoss,
    OperationTimeoutError,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.protocol.states import ZnodeStat

from pilotfish.catalog.backends.stored import StoredLease, decode_instance
from pilotfish.catalog.model import Instance
from pilotfish.config import parse_endpoints

log = logging.getLogger(__name__.rpartition(".")[0])  # the package's logger

DEFAULT_CHROOT = "/pilotfish"
SESSION_TIMEOUT = 2.0  # seconds; ZooKeeper clamps it to its min/maxSessionTimeout (2..20 ticks)
FAILOVER_MARGIN = 0.6  # reconnecting to another server and retrying the write, after kazoo's
# read timeout (2/3 of the session timeout) noticed a frozen one
PROBE_EVERY = 0.25  # a sync through the leader this often proves the cache current
OP_TIMEOUT = 3.0  # longest a catalog call waits for ZooKeeper (including a reconnect)
READ_GRACE = 2.0  # reads keep serving the cache for this long into a disconnection
CONNECT_WAIT = 5.0  # from_url waits this long for the first connection, then goes on
REAP_INTERVAL = 0.5
REAP_MARGIN = 0.5  # reap a lease this long after it lapsed (readers filter it already)
ORPHAN_GRACE = 10.0  # an instance whose lease node is missing this long is deleted
ELECTION_WAIT = 5.0
TXN_BATCH = 400  # instances removed per multi, far below ZooKeeper's 1 MB request limit

CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionDropped,
                     OperationTimeoutError)
LEASES = "leases"
INSTANCES = "instances"

Op = tuple[Any, ...]  # ("check", path, version) | ("create", path, data) | ("set", ...) | ...


@dataclass(slots=True)
class _InstanceEntry:
    instance: Instance
    version: int
    mzxid: int


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def _decode_lease(lease_id: str, raw: bytes, stat: ZnodeStat) -> StoredLease | None:
    return StoredLease.parse(lease_id, raw, stat.version, stat.mzxid)


def _decode_instance(raw: bytes, stat: ZnodeStat) -> _InstanceEntry | None:
    instance = decode_instance(raw)
    return None if instance is None else _InstanceEntry(instance, stat.version, stat.mzxid)


def _failure(results: list[Any]) -> tuple[int, Exception] | None:
    """The op that made a multi fail, or None when it committed."""
    for index, result in enumerate(results):
        if isinstance(result, Exception) and not isinstance(
            result, RolledBackError | RuntimeInconsistency
        ):
            return index, result
    return None


def min_ttl(session_timeout: float) -> int:
    """The smallest TTL a session timeout can honour: kazoo notices a frozen server after 2/3
    of it, then reconnects elsewhere and retries the keepalive, all before the lease lapses."""
    return max(2, math.ceil(session_timeout * 2 / 3 + FAILOVER_MARGIN))


def parse_zk_url(url: str) -> tuple[list[str], str, dict[str, float]]:
    """Split zk://h1:2181,h2:2181/chroot?session_timeout=6&timeout=3 into its parts."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "zk":
        raise ValueError(f"registry URL {url!r}: expected zk://host:port[,host:port]/chroot")
    hosts = [str(e) for e in parse_endpoints(parts.netloc, 2181, f"registry URL {url!r}")]
    chroot = parts.path.rstrip("/") or DEFAULT_CHROOT
    segments = chroot.split("/")[1:]
    if any(s in ("", ".", "..") or not s.isprintable() for s in segments) or (
        segments[0] == "zookeeper"
    ):
        raise ValueError(f"registry URL {url!r}: bad chroot {chroot!r}")
    options: dict[str, float] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in ("session_timeout", "timeout"):
            raise ValueError(f"registry URL {url!r}: unknown option {key!r} "
                             "(known: session_timeout, timeout)")
        try:
            value = float(values[-1])
        except ValueError:
            raise ValueError(f"registry URL {url!r}: {key} must be seconds") from None
        if not 0 < value <= 600:
            raise ValueError(f"registry URL {url!r}: {key} out of range")
        options[key] = value
    return hosts, chroot, options


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # consumed: failures here are retried by the next event or resync
