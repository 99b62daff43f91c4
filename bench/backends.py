"""Per backend: registrations/s and keepalives/s through the catalog, and how fast changes travel.

For each backend this starts its real server (etcd, ZooKeeper; the Consul HTTP API double,
or a real agent when CONSUL_HTTP_ADDR is set; a pilotfish API process for http://), then
measures in this process registrations/s and keepalives/s with concurrent callers, and, with
a second process following the catalog's watch, the delay from a register call to the change
appearing there and from a lease's expiry to its instance disappearing there.

    python -m bench.backends [--backends memory,etcd,zookeeper,consul,http] [--samples 200]

memory:// lives inside one process, so its cross-process figures are taken through a
pilotfish API (http:// over memory) and its rates in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from pilotfish.catalog import Catalog, Instance, open_catalog

REPOSITORY = Path(__file__).resolve().parent.parent  # where `-m bench.backends` is found
Server = Callable[[], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def memory_server() -> Iterator[str]:
    yield "memory://"


@contextlib.contextmanager
def http_server() -> Iterator[str]:
    from tests.fixtures.process import start_pilotfish

    with start_pilotfish("registry", "--api", "127.0.0.1:0") as api:
        yield api.api


@contextlib.contextmanager
def etcd_server() -> Iterator[str]:
    from tests.fixtures.etcd import EtcdServer

    with EtcdServer() as server:
        yield server.url("bench")


@contextlib.contextmanager
def zookeeper_server() -> Iterator[str]:
    from tests.fixtures.zookeeper import ZooKeeperServer

    with ZooKeeperServer() as server:
        yield server.url("/bench")


@contextlib.contextmanager
def consul_server() -> Iterator[str]:
    from tests.fixtures.consul import consul_service

    with consul_service() as url:
        yield url


SERVERS: dict[str, Server] = {
    "memory": memory_server,
    "etcd": etcd_server,
    "zookeeper": zookeeper_server,
    "consul": consul_server,
    "http": http_server,
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def bounded(calls: int, concurrency: int, call: Callable[[int], object]) -> float:
    """Run `calls` awaitables from call(n), `concurrency` at a time; returns calls per second."""
    queue = iter(range(calls))

    async def worker() -> None:
        for n in queue:
            await call(n)  # type: ignore[misc]

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


async def rates(catalog: Catalog, calls: int, concurrency: int) -> tuple[float, float]:
    """(registrations/s, keepalives/s) through the catalog."""
    tag = uuid.uuid4().hex[:6]
    lease = await catalog.create_lease(60, "bench")
    leases = [await catalog.create_lease(60, "bench") for _ in range(concurrency)]

    def register(n: int) -> object:
        return catalog.register(Instance(service=f"rate-{tag}-{n % 50}", id=f"r{tag}-{n}",
                                         address="10.0.0.1", port=1 + n, lease=lease.id))

    def keepalive(n: int) -> object:
        return catalog.keepalive(leases[n % concurrency].id)

    registrations = await bounded(calls, concurrency, register)
    keepalives = await bounded(calls, concurrency, keepalive)
    for held in (lease, *leases):
        await catalog.revoke(held.id)
    return registrations, keepalives


async def follow(url: str) -> None:
    """The second process: print `+ID time` and `-ID time` as instances come and go."""
    catalog = await open_catalog(url)
    snapshot = await catalog.snapshot()
    seen = set(snapshot.instances)
    print("READY", flush=True)
    while True:
        snapshot = await catalog.watch(snapshot.index, 30)
        now = time.time()
        current = set(snapshot.instances)
        for instance_id in current - seen:
            print(f"+{instance_id} {now:.6f}", flush=True)
        for instance_id in seen - current:
            print(f"-{instance_id} {now:.6f}", flush=True)
        seen = current


class Follower:
    """Runs `follow` in another process and reads when it saw each id appear or vanish."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.backends", "--follow", url],
            stdout=subprocess.PIPE, text=True, cwd=REPOSITORY)
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        if self.stdout.readline().strip() != "READY":
            raise RuntimeError("follower did not start")

    def wait_for(self, event: str, timeout: float = 10.0) -> float:
        """Block until the follower reports `event` (e.g. "+id"); returns its timestamp."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.stdout.readline()
            if not line:
                break
            name, _, stamp = line.strip().partition(" ")
            if name == event:
                return float(stamp)
        raise TimeoutError(f"follower never saw {event}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def propagation(catalog: Catalog, follower: Follower, samples: int) -> list[float]:
    """Seconds from a register call to the other process seeing the instance."""
    tag = uuid.uuid4().hex[:6]
    lease = await catalog.create_lease(60, "bench")
    delays = []
    for n in range(samples):
        started = time.time()
        await catalog.register(Instance(service=f"seen-{tag}", id=f"s{tag}-{n}",
                                        address="10.0.0.2", port=1 + n, lease=lease.id))
        delays.append(await asyncio.to_thread(follower.wait_for, f"+s{tag}-{n}") - started)
    await catalog.revoke(lease.id)
    return delays


async def expiry(catalog: Catalog, follower: Follower, samples: int, ttl: int = 2) -> list[float]:
    """Seconds from lease expiry (grant + ttl) to the other process seeing the instance go."""
    tag = uuid.uuid4().hex[:6]
    late = []
    for n in range(samples):
        granted = time.time()
        lease = await catalog.create_lease(ttl, "bench")
        await catalog.register(Instance(service=f"exp-{tag}", id=f"e{tag}-{n}",
                                        address="10.0.0.3", port=1 + n, lease=lease.id))
        gone = await asyncio.to_thread(follower.wait_for, f"-e{tag}-{n}", ttl + 10)
        late.append(gone - (granted + ttl))
    return late


async def measure(name: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    catalog = await open_catalog(url)
    try:
        registrations, keepalives = await rates(catalog, args.calls, args.concurrency)
    finally:
        await catalog.close()
    shared_url = url
    with contextlib.ExitStack() as stack:
        if name == "memory":  # another process can only see it through an API
            shared_url = stack.enter_context(http_server())
        catalog = await open_catalog(shared_url)
        follower = Follower(shared_url)
        try:
            delays = await propagation(catalog, follower, args.samples)
            late = await expiry(catalog, follower, args.expiries)
        finally:
            follower.stop()
            await catalog.close()
    return {
        "register/s": registrations, "keepalive/s": keepalives,
        "visible p50 ms": statistics.median(delays) * 1000,
        "visible p99 ms": percentile(delays, 0.99) * 1000,
        "expiry late max ms": max(late) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(SERVERS))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--expiries", type=int, default=3)
    parser.add_argument("--follow", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            asyncio.run(follow(args.follow))
        return
    columns = ["register/s", "keepalive/s", "visible p50 ms", "visible p99 ms",
               "expiry late max ms"]
    print(f"{'backend':<10}" + "".join(f"{c:>20}" for c in columns))
    for name in args.backends.split(","):
        with SERVERS[name]() as url:
            row = asyncio.run(measure(name, url, args))
        print(f"{name:<10}" + "".join(f"{row[c]:>20,.1f}" for c in columns), flush=True)
    print("(expiry late: time from lease expiry to the other process seeing the instance go; "
          "the guarantee is <= 1000 ms)")
    print(f"(machine: {os.cpu_count()} cores; quote medians of several runs)")


if __name__ == "__main__":
    main()
