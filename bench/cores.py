"""Every core: pilotfish with 1 and 2 workers against NSD, dnsmasq and HAProxy, in one run.

DNS: pilotfish (`up --workers 1` and `--workers 2`) against NSD (`server-count: 2`,
`reuseport: yes`) and dnsmasq (one thread) on the same small zone (SRV + A, no cache),
queried by dnsperf pinned to CPU 0 (`taskset -c 0`, 16 client sockets, so SO_REUSEPORT can
spread them). LB: pilotfish's balancer (`--workers 1` and `2`, bench/lb.py's
`pilotfish_workers`) against HAProxy `nbthread 2`, both on CPUs 0-1, over two nginx
backends, with wrk pinned to CPU 0: keep-alive and a new connection per request.

This machine has two cores, so the load generator shares CPU 0 with the servers: every
server is measured under the same handicap, and the ratios are what to read. Each figure is
the median of `--rounds` runs of `--seconds`, the servers taking turns within a round. CPU
per request is summed over a server's processes (pilotfish: the parent and its workers), and
is what docs/performance.md's estimate for 16 and 64 cores starts from.

The last line: `cores dns_vs_nsd=R dns_vs_dnsmasq=R lb_keepalive_vs_haproxy=R
lb_new_vs_haproxy=R dns_scaling=R lb_scaling=R` (scaling: 2 workers over 1, keep-alive for
the LB).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/cores.py` too

from bench.dns import (  # noqa: E402
    DOMAIN,
    addr_name,
    cpu_seconds,
    free_port,
    instances,
    start_dnsmasq,
    stop,
    wait_resolvable,
    write_queries,
)
from bench.lb import haproxy, measure, nginx, pilotfish_workers  # noqa: E402
from bench.registering import register_all  # noqa: E402

Sample = tuple[float, float]  # (rate, CPU microseconds per request)


def family(pid: int) -> list[int]:
    """A process and its descendants (pilotfish's parent and its workers; NSD's servers are
    its reload process's children)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = task / "children"
        for kid in children.read_text().split() if children.exists() else []:
            found += family(int(kid))
    return found


def dnsperf(port: int, pids: list[int], queries: Path, seconds: float, clients: int) -> Sample:
    """One dnsperf run on CPU 0: (queries/s, server CPU µs per query)."""
    before = sum(cpu_seconds(pid) for pid in pids)
    out = subprocess.run(
        ["taskset", "-c", "0", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
         str(queries), "-l", str(seconds), "-c", str(clients), "-T", "1", "-q", "256",
         "-t", "2"], capture_output=True, text=True, timeout=seconds + 60).stdout
    cpu = sum(cpu_seconds(pid) for pid in pids) - before
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    if qps is None or done is None:
        raise RuntimeError("dnsperf: " + out[-500:])
    return float(qps[1]), cpu * 1e6 / max(1, int(done[1]))


@contextlib.contextmanager
def nsd(workdir: Path, services: int, per_service: int) -> Iterator[tuple[int, list[int]]]:
    """NSD with `server-count: 2` serving the same records as a zone file."""
    port = free_port()
    rows = [f"$ORIGIN {DOMAIN}.", "$TTL 0",
            f"@ IN SOA ns.{DOMAIN}. hostmaster.{DOMAIN}. 1 3600 600 86400 1",
            f"@ IN NS ns.{DOMAIN}.", "ns IN A 127.0.0.1"]
    for service, _, address, ip_port in instances(services, per_service):
        rows.append(f"_{service}._tcp.service IN SRV 1 1 {ip_port} {addr_name(address)}.")
        rows.append(f"{service}.service IN A {address}")
        rows.append(f"{addr_name(address)}. IN A {address}")
    (workdir / "bench.zone").write_text("\n".join(rows) + "\n")
    conf = workdir / "nsd.conf"
    conf.write_text(f"""server:
  server-count: 2
  reuseport: yes
  ip-address: 127.0.0.1@{port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{workdir}"
  pidfile: "{workdir}/nsd.pid"
  xfrdfile: "{workdir}/xfrd.state"
  zonelistfile: "{workdir}/zone.list"
  database: ""
  logfile: "{workdir}/nsd.log"
  verbosity: 0
remote-control:
  control-enable: no
zone:
  name: "{DOMAIN}"
  zonefile: "bench.zone"
""")
    process = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_resolvable(port, f"svc0000.service.{DOMAIN}", "A", per_service)
        yield port, family(process.pid)
    finally:
        stop(process)


@contextlib.contextmanager
def pilotfish_dns(workdir: Path, workers: int, services: int,
                  per_service: int) -> Iterator[tuple[int, list[int]]]:
    """`pilotfish up --workers N` with DNS, the zone registered through its API."""
    port = free_port()
    err = workdir / f"pilotfish-{workers}.err"
    with open(err, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", "up", "--api", "127.0.0.1:0", "--dns",
             f"127.0.0.1:{port}", "--domain", DOMAIN, "--workers", str(workers)],
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"dns listening on", err.read_text()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pilotfish did not start: " + err.read_text())
            time.sleep(0.05)
        api = re.search(r"registry API listening on (http://\S+)", err.read_text())
        assert api is not None
        asyncio.run(register_all(api[1], list(instances(services, per_service))))
        last = f"svc{services - 1:04d}.service.{DOMAIN}"
        wait_resolvable(port, last, "A", per_service)
        yield port, family(process.pid)
    finally:
        stop(process)


def rounds(names: list[str], run: Callable[[str], Sample], count: int,
           label: str) -> dict[str, list[Sample]]:
    """`count` rounds, each server in turn within a round; prints every figure."""
    results: dict[str, list[Sample]] = {name: [] for name in names}
    for number in range(1, count + 1):
        for name in names:
            rate, cost = run(name)
            results[name].append((rate, cost))
            print(f"round {number} {label:14} {name:12} {rate:9.0f}/s "
                  f"{cost:6.1f} µs CPU each", flush=True)
    return results


def median(samples: list[Sample], field: int = 0) -> float:
    """The median of one field over the rounds."""
    return statistics.median(sample[field] for sample in samples)


def bench_dns(args: argparse.Namespace, workdir: Path) -> dict[str, list[Sample]]:
    """The four DNS servers on the same zone."""
    queries = workdir / "queries.txt"
    write_queries(queries, args.services, 50_000, seed=1)
    with contextlib.ExitStack() as stack:
        dnsmasq, dnsmasq_port = start_dnsmasq(workdir, args.services, args.instances)
        stack.callback(stop, dnsmasq)
        wait_resolvable(dnsmasq_port, f"svc0000.service.{DOMAIN}", "A", args.instances)
        servers = {
            "pilotfish-1": stack.enter_context(
                pilotfish_dns(workdir, 1, args.services, args.instances)),
            "pilotfish-2": stack.enter_context(
                pilotfish_dns(workdir, 2, args.services, args.instances)),
            "nsd-2": stack.enter_context(nsd(workdir, args.services, args.instances)),
            "dnsmasq": (dnsmasq_port, [dnsmasq.pid]),
        }
        for port, pids in servers.values():  # warm-up
            dnsperf(port, pids, queries, 1, args.clients)
        return rounds(list(servers), lambda name: dnsperf(
            servers[name][0], servers[name][1], queries, args.seconds, args.clients),
            args.rounds, "dns")


def bench_lb(args: argparse.Namespace, workdir: Path) -> dict[str, list[Sample]]:
    """pilotfish's LB on 1 and 2 workers and HAProxy nbthread 2, keep-alive and close."""
    backends = [free_port(), free_port()]
    ports = {name: free_port() for name in ("haproxy-2", "pilotfish-1", "pilotfish-2")}
    seconds = int(args.seconds)
    with contextlib.ExitStack() as stack:
        stack.enter_context(nginx(workdir, backends))
        pids = {
            "haproxy-2": [stack.enter_context(haproxy(workdir, ports["haproxy-2"], backends,
                                                      threads=2, cpus="0,1"))],
            "pilotfish-1": stack.enter_context(pilotfish_workers(
                ports["pilotfish-1"], backends, 1)),
            "pilotfish-2": stack.enter_context(pilotfish_workers(
                ports["pilotfish-2"], backends, 2)),
        }
        results: dict[str, list[Sample]] = {}
        for load in ("keep-alive", "close"):
            for name in pids:
                measure(pids[name], ports[name], load, 1)  # warm-up

            def run(name: str, load: str = load) -> Sample:
                result = measure(pids[name], ports[name], load, seconds)
                if result.errors:
                    print(f"  {name} {load}: {result.errors} errors", flush=True)
                units = result.rate * seconds
                return result.rate, result.cpu * 1e6 / units if units else float("nan")

            for name, samples in rounds(list(pids), run, args.rounds, f"lb {load}").items():
                results[f"{load} {name}"] = samples
        return results


def main() -> int:
    """Run both comparisons and print the medians, then the one summary line."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=50, help="the small zone")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "nsd", "dig", "haproxy", "nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench/cores.py: {tool} is not installed", file=sys.stderr)
            return 2
    print(f"cores available: {len(os.sched_getaffinity(0))}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pilotfish-bench-cores-") as tmp:
        (Path(tmp) / "dns").mkdir()
        (Path(tmp) / "lb").mkdir()
        dns = bench_dns(args, Path(tmp) / "dns")
        lb = bench_lb(args, Path(tmp) / "lb")
    print(f"\nmedians over {args.rounds} rounds of {args.seconds:g} s "
          f"(load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for name, samples in [*dns.items(), *lb.items()]:
        print(f"  {name:24} {median(samples):9.0f}/s {median(samples, 1):6.1f} µs CPU each")
    pf1, pf2 = median(dns["pilotfish-1"]), median(dns["pilotfish-2"])
    ka = {name: median(lb[f"keep-alive {name}"]) for name in ("haproxy-2", "pilotfish-1",
                                                              "pilotfish-2")}
    new = {name: median(lb[f"close {name}"]) for name in ("haproxy-2", "pilotfish-1",
                                                          "pilotfish-2")}
    print(f"  lb new-connection scaling 1 -> 2 workers: "
          f"{new['pilotfish-2'] / new['pilotfish-1']:.2f}")
    print(f"cores dns_vs_nsd={pf2 / median(dns['nsd-2']):.2f} "
          f"dns_vs_dnsmasq={pf2 / median(dns['dnsmasq']):.2f} "
          f"lb_keepalive_vs_haproxy={ka['pilotfish-2'] / ka['haproxy-2']:.2f} "
          f"lb_new_vs_haproxy={new['pilotfish-2'] / new['haproxy-2']:.2f} "
          f"dns_scaling={pf2 / pf1:.2f} lb_scaling={ka['pilotfish-2'] / ka['pilotfish-1']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
