"""A minimal registrar, as a sidecar would be: one lease, some instances, steady keepalives.

Tests use `Registrar` in-process, or run this file as a separate process that they
can SIGKILL (the rogue-container case):

    python tests/registrar.py URL SERVICE COUNT [--ttl 2] [--port 20000]

It prints `READY <lease>` once everything is registered, then one line per event:
`UNKNOWN_LEASE`, `REREGISTERED <lease>`, `UNAVAILABLE <error>`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from pilotfish.registry import BackendUnavailable, Catalog, Instance, UnknownLease, open_catalog

Report = Callable[[str], None]


class Registrar:
    """Keeps `count` instances of a service registered on one lease, re-registering as needed."""

    def __init__(self, catalog: Catalog, service: str, count: int, ttl: int = 2,
                 port: int = 20000, report: Report | None = None) -> None:
        self.catalog = catalog
        self.service = service
        self.ttl = ttl
        self.interval = ttl / 3
        self.ids = [f"{service}-{n}" for n in range(count)]
        self.port = port
        self.lease = ""
        self.unknown_leases = 0
        self.unavailable = 0
        self.registrations = 0
        self._report = report or (lambda line: None)

    async def register_all(self) -> str:
        """Take a new lease and put every instance on it."""
        lease = await self.catalog.create_lease(self.ttl, owner=f"registrar:{self.service}")
        await asyncio.gather(*(
            self.catalog.register(Instance(service=self.service, id=instance_id,
                                           address="127.0.0.1", port=self.port + n,
                                           lease=lease.id))
            for n, instance_id in enumerate(self.ids)
        ))
        self.lease = lease.id
        self.registrations += 1
        return lease.id

    async def run(self) -> None:
        """Keep the lease alive every ttl/3 forever; re-register when the registry forgot it."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not self.lease:
                    self._report(f"REREGISTERED {await self.register_all()}")
                    continue
                try:
                    await self.catalog.keepalive(self.lease)
                except UnknownLease:
                    self.unknown_leases += 1
                    self.lease = ""
                    self._report("UNKNOWN_LEASE")
                    self._report(f"REREGISTERED {await self.register_all()}")
            except BackendUnavailable as exc:
                self.unavailable += 1
                self._report(f"UNAVAILABLE {exc}")


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("service")
    parser.add_argument("count", type=int)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--port", type=int, default=20000)
    args = parser.parse_args(argv)

    def report(line: str) -> None:
        print(line, flush=True)

    catalog = await open_catalog(args.url)
    try:
        registrar = Registrar(catalog, args.service, args.count, args.ttl, args.port, report)
        report(f"READY {await registrar.register_all()}")
        await registrar.run()
    finally:
        await catalog.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
