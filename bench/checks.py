"""Health checks end to end: how fast a failing HTTP check takes an app out of DNS and the LB
(and a passing one brings it back), what 200 checks a second cost, and `docker stop` of an
app that drains.

1. A real dockerd (tests/fixtures/docker.py) and `pilotfish up --docker --route` (embedded
   backend; sidecar, DNS and LB in one process). Two busybox httpd containers share one
   service behind the route; one (A) has `SERVICE_CHECK_HTTP=/health` at 1 s, its files
   bind-mounted from here, so this process breaks and mends the check by deleting and
   creating the file at a known instant. For each of --tries: the file is deleted (at a random
   phase of the probe interval), then created again; each time the bench polls DNS (SRV of
   the service, every 10 ms) and the LB route (one request after another) and takes the later
   of "DNS stopped/started giving A's port" and "the LB stopped/started reaching A" (the last
   request started that A answered, or the first). Goal: p99 <= interval + 200 ms.
2. CPU: the sidecar's checker (the same scheduler and probes the sidecar runs) with 200 HTTP
   checks at 1 s, each to its own port of a lightweight HTTP server running in another
   process (asyncio, 200 listeners), not containers: starting 200 containers would measure
   dockerd. The checker's process CPU time as a share of one core: the median of
   5 windows over --cpu-seconds.
3. `docker stop` (grace 10 s) of A, which drains for 3 s after SIGTERM, while requests keep
   going through the LB: requests started after Docker's `kill` event that A answered
   (new connections), and requests that failed.

    python -m bench.checks [--tries 50] [--cpu-seconds 20]

Last line: `checks fail_p99_ms=… recover_p99_ms=… interval_ms=… cpu_200_pct=…
stop_new_conns=… stop_failed=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import dns.asyncquery
import dns.message
import dns.rdatatype

from bench.sidecar import percentile
from pilotfish.catalog.model import Check, Instance
from pilotfish.sidecar.checker import Checker
from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import start_pilotfish
from tests.fixtures.servers import free_port

INTERVAL = 1.0
WINDOWS = 5  # the CPU share is the median over this many windows
SERVICE = "app"
SERVERS = """
import asyncio, sys, uvloop
async def serve(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    writer.close()
async def main():
    ports = []
    for _ in range(int(sys.argv[1])):
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        ports.append(server.sockets[0].getsockname()[1])
    print(" ".join(map(str, ports)), flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""


def web(engine: DockerEngine, name: str, port: int, root: Path, *labels: str,
        drain: float = 0.0) -> str:
    """busybox httpd serving `root` (bind-mounted) on 127.0.0.1:port; drains `drain` s on TERM."""
    serve = (f"httpd -f -p 127.0.0.1:{port} -h /www & pid=$!; "
             f"trap 'sleep {drain}; kill $pid; exit 0' TERM; while true; do sleep 0.1; done")
    args = [a for label in (f"SERVICE_NAME={SERVICE}", *labels) for a in ("-l", label)]
    return engine.run("--network", "host", "--name", name, "--expose", str(port),
                      "-v", f"{root}:/www", *args, command=("sh", "-c", serve))


class Watcher:
    """Polls DNS (SRV) and the LB route without pause, recording what each answered when."""

    def __init__(self, dns_at: tuple[str, int], route: int, port_a: int) -> None:
        self.dns_at, self.route, self.port_a = dns_at, route, port_a
        self.dns: list[tuple[float, bool]] = []  # (asked at, A's port in the answer)
        self.lb: list[tuple[float, str]] = []  # (request started, who answered or "failed")

    async def poll_dns(self) -> None:
        """SRV of the service every 10 ms."""
        query = dns.message.make_query(f"{SERVICE}.service.pilotfish", "SRV")
        while True:
            asked = time.monotonic()
            answer = await dns.asyncquery.udp(query, self.dns_at[0], port=self.dns_at[1],
                                              timeout=2)
            ports = {r.port for rrset in answer.answer if rrset.rdtype == dns.rdatatype.SRV
                     for r in rrset}
            self.dns.append((asked, self.port_a in ports))
            await asyncio.sleep(0.01)

    async def poll_lb(self) -> None:
        """One HTTP request through the route after another."""
        while True:
            started = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.route)
                writer.write(b"GET /id HTTP/1.0\r\n\r\n")
                data = await asyncio.wait_for(reader.read(), 2)
                writer.close()
                body = data.partition(b"\r\n\r\n")[2].decode().strip()
                self.lb.append((started, body or "failed"))
            except (OSError, TimeoutError):
                self.lb.append((started, "failed"))
            await asyncio.sleep(0.002)

    def out_after(self, since: float) -> float:
        """Seconds from `since` until neither DNS nor the LB gave A any more."""
        dns_out = next(t for t, has in self.dns if t > since and not has)
        last_a = max((t for t, who in self.lb if t > since and who == "a"), default=since)
        return max(dns_out, last_a) - since

    def in_after(self, since: float) -> float:
        """Seconds from `since` until DNS gave A again and the LB reached it."""
        dns_in = next(t for t, has in self.dns if t > since and has)
        first_a = next(t for t, who in self.lb if t > since and who == "a")
        return max(dns_in, first_a) - since


async def wait_for(condition: object, timeout: float) -> None:
    """Poll `condition()` every 10 ms until true."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


def mend(health: Path, ok: bool) -> None:
    """Make A's check pass (the file is there) or fail (it is not: 404)."""
    if ok:
        health.write_text("ok\n")
    else:
        health.unlink()


def http_servers(count: int) -> tuple[subprocess.Popen[str], list[int]]:
    """The lightweight HTTP servers (another process): it, and their ports."""
    servers = subprocess.Popen([sys.executable, "-c", SERVERS, str(count)],
                               stdout=subprocess.PIPE, text=True)
    assert servers.stdout is not None
    return servers, [int(p) for p in servers.stdout.readline().split()]


async def flaps(watcher: Watcher, health: Path, tries: int) -> tuple[list[float], list[float]]:
    """Break and mend A's check `tries` times; the out and in latencies."""
    outs, ins = [], []
    for _ in range(tries):
        await asyncio.sleep(random.uniform(0, INTERVAL))
        since = time.monotonic()
        mend(health, False)
        await wait_for(lambda s=since: any(t > s and not h for t, h in watcher.dns), 10)
        await asyncio.sleep(0.3)
        outs.append(watcher.out_after(since))
        await asyncio.sleep(random.uniform(0, INTERVAL))
        since = time.monotonic()
        mend(health, True)
        await wait_for(lambda s=since: any(t > s and h for t, h in watcher.dns)
                       and any(t > s and w == "a" for t, w in watcher.lb), 10)
        ins.append(watcher.in_after(since))
    return outs, ins


async def stop_draining(engine: DockerEngine, watcher: Watcher) -> tuple[int, int, float]:
    """docker stop A (draining 3 s): A's answers to requests started after the kill event,
    failed requests meanwhile, and how long the stop took."""
    client = aiodocker.Docker(url=engine.host)
    try:
        subscriber = client.events.subscribe(filters=json.dumps({"type": ["container"],
                                                                  "event": ["kill"]}))
        await asyncio.sleep(0.5)
        begun = time.monotonic()
        failed_before = sum(1 for _, who in watcher.lb if who == "failed")
        stopping = asyncio.create_task(asyncio.to_thread(engine.stop_containers, "app-a", grace=10))
        event = await asyncio.wait_for(subscriber.get(), 10)
        assert event is not None
        killed = time.monotonic() - (time.time() - int(event["timeNano"]) / 1e9)
        await stopping
        took = time.monotonic() - begun
        await asyncio.sleep(0.5)
        new = sum(1 for t, who in watcher.lb if t > killed and who == "a")
        failed = sum(1 for _, who in watcher.lb if who == "failed") - failed_before
        return new, failed, took
    finally:
        await client.close()


async def cpu_of_checks(count: int, seconds: float) -> float:
    """Percent of one core the checker uses for `count` HTTP checks at 1 s."""
    servers, ports = http_servers(count)
    try:
        changes = 0

        def changed() -> None:
            nonlocal changes
            changes += 1

        checker = Checker(changed)
        checker.follow([(f"c{n}", Instance(
            service="load", id=f"i{n}", address="127.0.0.1", port=port, lease="l",
            checks=(Check(id="http", name="http", kind="http", interval=INTERVAL, timeout=1.0,
                          target=f"http://127.0.0.1:{port}/health"),)))
            for n, port in enumerate(ports)])
        await checker.start()
        await asyncio.sleep(3)  # every check probed: critical (the initial status) to passing
        warmed_up, changes = changes, 0
        shares, probes = [], checker.probes
        for _ in range(WINDOWS):
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(seconds / WINDOWS)
            shares.append((time.process_time() - cpu) / (time.monotonic() - wall) * 100)
        rate = (checker.probes - probes) / seconds
        await checker.stop()
        used = statistics.median(shares)
        print(f"checker: {count} HTTP checks at {INTERVAL:g}s: {rate:.0f} probes/s, "
              f"{used:.1f}% of a core (median of {WINDOWS} windows: "
              f"{', '.join(f'{s:.1f}' for s in shares)}); the first probes asked "
              f"{warmed_up} registrations, the measured windows {changes} (a flap asks one)")
        return used
    finally:
        servers.terminate()
        servers.wait()


async def main_async(args: argparse.Namespace) -> None:
    cpu = await cpu_of_checks(200, args.cpu_seconds)
    print(f"load average: {os.getloadavg()}")
    with DockerEngine() as engine, tempfile.TemporaryDirectory() as folder:
        engine.import_busybox()
        root_a, root_b = Path(folder) / "a", Path(folder) / "b"
        for root, name in ((root_a, "a"), (root_b, "b")):
            root.mkdir()
            (root / "id").write_text(f"{name}\n")
        health = root_a / "health"
        health.write_text("ok\n")
        route = free_port()
        with start_pilotfish("up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0",
                             "--docker", engine.host, "--advertise-ip", "127.0.0.1",
                             "--sidecar-id", "bench", "--route", f"127.0.0.1:{route}={SERVICE}",
                             "--lb-api", "off", expect=("registry API", "dns"),
                             timeout=60) as up:
            host, _, port = up.listening["dns"].rpartition(":")
            port_a = free_port()
            web(engine, "app-a", port_a, root_a, "SERVICE_CHECK_HTTP=/health",
                f"SERVICE_CHECK_INTERVAL={INTERVAL:g}s", drain=3.0)
            web(engine, "app-b", free_port(), root_b)
            watcher = Watcher((host, int(port)), route, port_a)
            polls = [asyncio.create_task(watcher.poll_dns()),
                     asyncio.create_task(watcher.poll_lb())]
            await wait_for(lambda: any(w == "a" for _, w in watcher.lb[-20:])
                           and any(w == "b" for _, w in watcher.lb[-20:]), 30)
            outs, ins = await flaps(watcher, health, args.tries)
            print(f"check fails -> out of DNS and LB: median {statistics.median(outs) * 1000:.0f}"
                  f" ms, p99 {percentile(outs, 0.99) * 1000:.0f} ms, max {max(outs) * 1000:.0f} "
                  f"ms over {len(outs)} (interval {INTERVAL * 1000:.0f} ms)")
            print(f"check passes -> back in DNS and LB: median "
                  f"{statistics.median(ins) * 1000:.0f} ms, p99 {percentile(ins, 0.99) * 1000:.0f}"
                  f" ms, max {max(ins) * 1000:.0f} ms")
            new, failed, took = await stop_draining(engine, watcher)
            print(f"docker stop of an app draining 3 s (took {took:.1f} s): {new} new "
                  f"connections to it after the kill event, {failed} failed requests "
                  f"({len(watcher.lb)} requests in the whole run)")
            for poll in polls:
                poll.cancel()
    print(f"load average: {os.getloadavg()}")
    print(f"checks fail_p99_ms={percentile(outs, 0.99) * 1000:.0f} "
          f"recover_p99_ms={percentile(ins, 0.99) * 1000:.0f} interval_ms={INTERVAL * 1000:.0f}"
          f" cpu_200_pct={cpu:.1f} stop_new_conns={new} stop_failed={failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    import uvloop
    uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
