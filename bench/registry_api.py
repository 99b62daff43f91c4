"""Sustained keepalives/s and registrations/s through the REST API over keep-alive connections.

Starts `pilotfish registry` (memory backend) pinned to one core, drives it from this process
(pinned to the other core) with several concurrent HTTP/1.1 keep-alive connections written
on raw sockets, and prints the median of several rounds. There is no peer for this one:
the target is an absolute floor (5,000 keepalives/s on one core).

    python -m bench.registry_api [--connections 8] [--seconds 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable

from tests.fixtures.process import start_pilotfish

Request = Callable[[int, int], bytes]


async def drive(host: str, port: int, make: Request, connections: int, seconds: float) -> int:
    """Run `connections` request/response loops for `seconds`; returns requests completed."""
    deadline = time.monotonic() + seconds
    done = 0

    async def one(worker: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        n = 0
        try:
            while time.monotonic() < deadline:
                writer.write(make(worker, n))
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if status >= 300:
                    raise RuntimeError(f"unexpected status {status}: {head!r}")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                n += 1
        finally:
            done += n
            writer.close()

    await asyncio.gather(*(one(w) for w in range(connections)))
    return done


def http(method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def create_leases(host: str, port: int, count: int) -> list[str]:
    reader, writer = await asyncio.open_connection(host, port)
    leases = []
    for _ in range(count):
        writer.write(http("POST", "/v1/leases", b'{"ttl": 600, "owner": "bench"}'))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        leases.append(json.loads(await reader.readexactly(length))["id"])
    writer.close()
    return leases


async def bench(args: argparse.Namespace, host: str, port: int) -> None:
    leases = await create_leases(host, port, args.connections)
    keepalives = [http("PUT", f"/v1/leases/{lease}/keepalive") for lease in leases]

    def keepalive(worker: int, n: int) -> bytes:
        return keepalives[worker]

    def registration(worker: int, n: int) -> bytes:
        body = json.dumps({"address": "10.0.0.1", "port": 1 + n % 65535, "lease": leases[worker],
                           "tags": ["bench"]}).encode()
        return http("PUT", f"/v1/services/bench-{n % 100}/instances/w{worker}-{n}", body)

    for label, make in (("keepalives", keepalive), ("registrations", registration)):
        rates = []
        for _ in range(args.rounds):
            done = await drive(host, port, make, args.connections, args.seconds)
            rates.append(done / args.seconds)
        print(f"{label}/s: median {statistics.median(rates):,.0f}  "
              f"(rounds: {', '.join(f'{r:,.0f}' for r in rates)}; "
              f"{args.connections} keep-alive connections, server on one core)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = start_pilotfish("registry", "--api", "127.0.0.1:0")
    try:
        os.sched_setaffinity(server.process.pid, {0})
        os.sched_setaffinity(0, {1})
        host, port = server.listening["registry API"].rsplit(":", 1)
        asyncio.run(bench(args, host, int(port)))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
