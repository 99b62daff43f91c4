"""The DNS server as it runs in a worker process (pilotfish/workers/__init__.py: how)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pilotfish.config import HostPort
from pilotfish.dns.access import ForwardAllow, Network, RateLimit
from pilotfish.dns.server import DnsServer
from pilotfish.dns.zone import ZoneSettings
from pilotfish.metrics import Sample
from pilotfish.workers.part import WorkerContext


@dataclass(frozen=True)
class DnsConfig:
    """Everything a worker needs to build the same DnsServer as the parent would have."""

    listen: HostPort  # the port is picked already: every worker binds the same one
    settings: ZoneSettings
    forward: tuple[HostPort, ...]
    udp_size: int
    forward_allow: tuple[Network, ...]
    rrl: float | None  # the machine's rate: each of N workers holds a client to rrl / N


def _share(rate: float | None, workers: int) -> RateLimit | None:
    """One worker's part of the machine's --dns-rrl: rate / N, and a burst of whole responses
    (so N workers together allow the rate's burst, at most N - 1 more)."""
    if not rate:
        return None
    return RateLimit(rate / workers, burst=math.ceil(rate / workers))


class DnsPart:
    """A DnsServer on the worker's replica view, sharing the port with its siblings."""

    def __init__(self, config: DnsConfig, context: WorkerContext) -> None:
        self.server = DnsServer(
            None, config.listen, config.settings, forward=config.forward,
            udp_size=config.udp_size, view=context.view,
            forward_allow=ForwardAllow(config.forward_allow),
            rate_limit=_share(config.rrl, context.count), reuse_port=True)

    async def start(self) -> None:
        """Bind UDP and TCP with SO_REUSEPORT and answer from the replica view."""
        await self.server.start()

    async def stop(self) -> None:
        """Close the listeners; relayed queries in flight are cancelled."""
        await self.server.stop()

    def samples(self) -> Iterable[Sample]:
        """The DNS series of this worker (the parent sums them)."""
        return self.server.samples()

    def message(self, kind: str, body: Any) -> Any:
        """DNS reloads nothing on SIGHUP; nothing else is sent to it."""
        return None


def build(config: DnsConfig, context: WorkerContext) -> DnsPart:
    """The factory named in the DNS WorkerSpec ("pilotfish.dns.worker:build")."""
    return DnsPart(config, context)
