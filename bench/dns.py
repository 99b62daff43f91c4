"""DNS benchmark: pilotfish against dnsmasq serving the same records, with dnsperf, in one run.

Both servers hold SERVICES services x INSTANCES instances on 127.0.0.1:

- `<svc>.service.bench`        A records (dnsmasq: host-record)
- `_<svc>._tcp.service.bench`  SRV records, targets `<hex>.addr.bench` (dnsmasq: srv-host)

The query mix is half SRV, half A over random services; half of the clients send EDNS0
(dnsperf -e), half plain queries. Each server is measured with the same dnsperf runs in turn;
the script prints queries/s, p99 latency, server CPU seconds per 100k queries, and the ratio
pilotfish/dnsmasq for each round, then the medians. p99 comes from dnsperf -v (every query's
latency); "lost" counts queries still in flight when the time limit ends (about -q per run).
Nothing else should load the machine while it runs: both servers share two cores with dnsperf.

    python -m bench.dns [--rounds 3] [--seconds 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.registering import register_all

DOMAIN = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One dnsperf measurement of one server."""

    qps: float
    p99_ms: float
    cpu_per_100k: float
    completed: int
    lost: int


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def instances(services: int, per_service: int) -> Iterator[tuple[str, str, str, int]]:
    """(service, id, address, port) for every benchmark instance."""
    for s in range(services):
        for i in range(per_service):
            n = s * per_service + i + 1
            address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            yield f"svc{s:04d}", f"svc{s:04d}-{i}", address, 8000 + i


def addr_name(address: str) -> str:
    """pilotfish's SRV target name for an address, which dnsmasq is given as well."""
    return "".join(f"{int(o):02x}" for o in address.split(".")) + f".addr.{DOMAIN}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def write_queries(path: Path, services: int, count: int, seed: int) -> None:
    """A dnsperf data file: half SRV, half A, over random services."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        s = rng.randrange(services)
        if rng.random() < 0.5:
            lines.append(f"_svc{s:04d}._tcp.service.{DOMAIN} SRV")
        else:
            lines.append(f"svc{s:04d}.service.{DOMAIN} A")
    path.write_text("\n".join(lines) + "\n")


def start_dnsmasq(workdir: Path, services: int,
                  per_service: int) -> tuple[subprocess.Popen[bytes], int]:
    """dnsmasq on 127.0.0.1 with the same records, no upstreams, no cache."""
    port = free_port()
    lines = [f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
             "no-hosts", "no-poll", "cache-size=0", f"local=/{DOMAIN}/", "user=root",
             "log-facility=/dev/null"]
    for service, _, address, ip_port in instances(services, per_service):
        lines.append(f"srv-host=_{service}._tcp.service.{DOMAIN},{addr_name(address)},{ip_port},1,1")
        lines.append(f"host-record={service}.service.{DOMAIN},{address}")
        lines.append(f"host-record={addr_name(address)},{address}")
    conf = workdir / "dnsmasq.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(["dnsmasq", f"--conf-file={conf}", "--keep-in-foreground",
                                f"--pid-file={workdir / 'dnsmasq.pid'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return process, port


def start_pilotfish(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    """`pilotfish up` with DNS on an ephemeral port; returns (process, dns port, API URL)."""
    err = open(workdir / "pilotfish.err", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "up", "--api", "127.0.0.1:0", "--dns",
         "127.0.0.1:0", "--domain", DOMAIN, "--workers", "1", "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    api = dns = None
    while time.monotonic() < deadline and (api is None or dns is None):
        if process.poll() is not None:
            raise RuntimeError((workdir / "pilotfish.err").read_text())
        text = (workdir / "pilotfish.err").read_text()
        if m := re.search(r"registry API listening on (http://\S+)", text):
            api = m.group(1)
        if m := re.search(r"dns listening on udp://\S+:(\d+)", text):
            dns = int(m.group(1))
        time.sleep(0.05)
    if api is None or dns is None:
        raise RuntimeError("pilotfish did not start: " + (workdir / "pilotfish.err").read_text())
    return process, dns, api


def wait_resolvable(port: int, name: str, rtype: str, expect: int, timeout: float = 30) -> None:
    """Poll with dig until `name` has `expect` answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["dig", "+short", "+tries=1", "+time=1", "-p", str(port),
                              "@127.0.0.1", name, rtype], capture_output=True, text=True).stdout
        if len(out.split("\n")) - 1 >= expect:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{name} {rtype} not resolvable on port {port}")


def dnsperf(port: int, pid: int, queries: Path, seconds: float, clients: int) -> Result:
    """Two dnsperf processes at once, one with EDNS0, one without; latencies from -v."""
    half = max(1, clients // 2)
    common = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
              "-l", str(seconds), "-c", str(half), "-T", str(half), "-q", "50", "-t", "2",
              "-v"]
    cpu_before = cpu_seconds(pid)
    runs = [subprocess.Popen(common + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for flags in ([], ["-e"])]
    outputs = [run.communicate(timeout=seconds + 60)[0] for run in runs]
    cpu = cpu_seconds(pid) - cpu_before
    latencies: list[float] = []
    completed = lost = 0
    qps = 0.0
    for out in outputs:
        for line in out.splitlines():
            if line.startswith("> "):
                parts = line.split()
                with contextlib.suppress(ValueError, IndexError):
                    latencies.append(float(parts[-1]))
            elif m := re.search(r"Queries completed:\s+(\d+)", line):
                completed += int(m.group(1))
            elif m := re.search(r"Queries lost:\s+(\d+)", line):
                lost += int(m.group(1))
            elif m := re.search(r"Queries per second:\s+([\d.]+)", line):
                qps += float(m.group(1))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    per_100k = cpu / completed * 100_000 if completed else float("nan")
    return Result(qps, p99, per_100k, completed, lost)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("dnsmasq", "dnsperf", "dig"):
        if shutil.which(tool) is None:
            print(f"bench/dns.py: {tool} is not installed", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="pilotfish-bench-dns-") as tmp:
        workdir = Path(tmp)
        queries = workdir / "queries.txt"
        write_queries(queries, args.services, 100_000, seed=1)
        dnsmasq, dnsmasq_port = start_dnsmasq(workdir, args.services, args.instances)
        pilotfish = None
        try:
            pilotfish, pilotfish_port, api = start_pilotfish(workdir)
            started = time.monotonic()
            asyncio.run(register_all(api, list(instances(args.services, args.instances))))
            last = f"svc{args.services - 1:04d}"
            for port in (pilotfish_port, dnsmasq_port):
                wait_resolvable(port, f"_{last}._tcp.service.{DOMAIN}", "SRV", args.instances)
                wait_resolvable(port, f"{last}.service.{DOMAIN}", "A", args.instances)
            print(f"{args.services * args.instances} instances registered and resolvable in "
                  f"{time.monotonic() - started:.1f} s; dnsperf -c {args.clients} "
                  f"-l {args.seconds:g}, half EDNS, half SRV / half A", flush=True)
            ratios: list[float] = []
            table: dict[str, list[Result]] = {"dnsmasq": [], "pilotfish": []}
            for round_no in range(1, args.rounds + 1):
                for name, port, pid in (("dnsmasq", dnsmasq_port, dnsmasq.pid),
                                        ("pilotfish", pilotfish_port, pilotfish.pid)):
                    result = dnsperf(port, pid, queries, args.seconds, args.clients)
                    table[name].append(result)
                    print(f"round {round_no} {name:9s} {result.qps:10,.0f} q/s  "
                          f"p99 {result.p99_ms:6.3f} ms  cpu {result.cpu_per_100k:5.2f} s/100k "
                          f"lost {result.lost}", flush=True)
                ratio = table["pilotfish"][-1].qps / table["dnsmasq"][-1].qps
                ratios.append(ratio)
                print(f"round {round_no} ratio pilotfish/dnsmasq {ratio:.2f}", flush=True)
            print("medians:")
            for name, results in table.items():
                print(f"  {name:9s} {statistics.median(r.qps for r in results):10,.0f} q/s  "
                      f"p99 {statistics.median(r.p99_ms for r in results):6.3f} ms  "
                      f"cpu {statistics.median(r.cpu_per_100k for r in results):5.2f} s/100k")
            print(f"  ratio pilotfish/dnsmasq {statistics.median(ratios):.2f}")
            cpu = {name: statistics.median(r.cpu_per_100k for r in results)
                   for name, results in table.items()}
            print(f"  CPU per query dnsmasq/pilotfish {cpu['dnsmasq'] / cpu['pilotfish']:.2f} "
                  "(less sensitive to other load on the machine than q/s)")
        finally:
            if pilotfish is not None:
                stop(pilotfish)
            stop(dnsmasq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
