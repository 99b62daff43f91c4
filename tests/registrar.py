"""A registrar in a process of its own, which tests can SIGKILL (the rogue-container case).

    python -m tests.registrar URL SERVICE COUNT [--ttl 2] [--port 20000]

Registers COUNT instances of SERVICE on one lease through pilotfish's Registrar
(keepalive every ttl/3, re-registration on an unknown lease), prints `READY <lease>`,
and keeps them alive until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pilotfish.registry import Instance, open_catalog
from pilotfish.registry.registrar import Registrar


async def main(argv: list[str]) -> None:
    """Register, say READY, keep alive forever."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("service")
    parser.add_argument("count", type=int)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--port", type=int, default=20000)
    args = parser.parse_args(argv)

    catalog = await open_catalog(args.url)
    registrar = Registrar(catalog, ttl=args.ttl, owner=f"registrar:{args.service}")
    try:
        await registrar.start()
        for n in range(args.count):
            await registrar.add(Instance(service=args.service, id=f"{args.service}-{n}",
                                         address="127.0.0.1", port=args.port + n, lease="unset"))
        print(f"READY {registrar.lease_id}", flush=True)
        await asyncio.Event().wait()
    finally:
        await registrar.stop(revoke=False)
        await catalog.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
