"""LB benchmark: pilotfish against HAProxy 2.6 (mode tcp, nbthread 1) over the same two nginx
backends, with wrk through each in the same run.

Three loads, each run against HAProxy and pilotfish in turn, `--rounds` times:

- keep-alive: wrk -c 50 GET of a small body over persistent connections (requests/s)
- close:      the same with `Connection: close`, so every request is a new TCP connection
- bulk:       wrk -c 4 GET of a 64 MiB file, over and over (throughput MiB/s and p99 latency)

For each it prints requests/s (or MiB/s), p99 latency, the balancer's CPU seconds, and the
pilotfish/HAProxy ratio; then the medians. The balancer under test runs pinned to CPU 1,
wrk and nginx to CPU 0 (two cores). Other load on the machine skews absolute numbers; the
ratios of the same round are what to read.

    python -m bench.lb [--rounds 3] [--seconds 8] [--no-uvloop] [--engine epoll|transports]
"""

from __future__ import annotations

import argparse
import contextlib
import os
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

import httpx

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
BULK_SIZE = 64 << 20


@dataclass
class Result:
    """One wrk run through one balancer."""

    rate: float  # requests/s, or MiB/s for bulk
    p99_ms: float
    cpu: float  # balancer CPU seconds during the run
    errors: int


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def nginx(workdir: Path, ports: list[int]) -> Iterator[None]:
    """One nginx (one worker on CPU 0) with a server per port: /small and /bulk."""
    root = workdir / "www"
    root.mkdir()
    (root / "small").write_text("hello from nginx\n")
    with open(root / "bulk", "wb") as handle:
        handle.truncate(BULK_SIZE)
    servers = "\n".join(
        f"server {{ listen {HOST}:{port} reuseport backlog=4096; root {root}; "
        f"keepalive_requests 1000000; access_log off; }}" for port in ports)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; worker_cpu_affinity 01;
pid {workdir}/nginx.pid; error_log {workdir}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ sendfile on; tcp_nopush on; default_type text/plain;
       client_body_temp_path {workdir}; proxy_temp_path {workdir};
       fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
       {servers} }}
""")
    process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)])
    try:
        for port in ports:
            wait_port(port)
        yield
    finally:
        process.terminate()
        process.wait()


@contextlib.contextmanager
def haproxy(workdir: Path, port: int, backends: list[int], threads: int = 1,
            cpus: str = "1") -> Iterator[int]:
    """HAProxy, mode tcp, `threads` threads (nbthread) on `cpus`, round robin over the
    backends; yields its pid."""
    servers = "\n".join(f"  server s{i} {HOST}:{p}" for i, p in enumerate(backends))
    conf = workdir / f"haproxy-{port}.cfg"
    conf.write_text(f"""global
  nbthread {threads}
  maxconn 8000
defaults
  mode tcp
  timeout connect 2s
  timeout client 300s
  timeout server 300s
frontend f
  bind {HOST}:{port}
  default_backend b
backend b
  balance roundrobin
{servers}
""")
    process = subprocess.Popen(["taskset", "-c", cpus, "haproxy", "-f", str(conf)])
    try:
        wait_port(port)
        yield process.pid
    finally:
        process.terminate()
        process.wait()


@contextlib.contextmanager
def pilotfish(port: int, backends: list[int], no_uvloop: bool,
              engine: str | None = None) -> Iterator[int]:
    """`pilotfish up` (API + one route, no DNS, one process) pinned to CPU 1; yields its pid."""
    with pilotfish_workers(port, backends, 1, "1", engine, no_uvloop) as pids:
        yield pids[0]


@contextlib.contextmanager
def pilotfish_workers(port: int, backends: list[int], workers: int, cpus: str = "0,1",
                      engine: str | None = None, no_uvloop: bool = False) -> Iterator[list[int]]:
    """pilotfish's LB with `workers` worker processes (`pilotfish lb --workers N`, on an
    embedded catalog through `pilotfish up`) on one route HOST:port over the backends, the
    whole process tree pinned to `cpus`; yields the pids that carry connections (the workers;
    the one process with `workers=1`), for `cpu_seconds`. For bench/cores.py (branch cores):
    1 and 2 workers against `haproxy(..., threads=2, cpus=...)`."""
    api_port = free_port()
    args = ["taskset", "-c", cpus, sys.executable, "-m", "pilotfish", "up", "--api",
            f"{HOST}:{api_port}", "--dns", "off", "--lb-api", "off", "--workers", str(workers),
            "--lb-check-interval", "0", "--route", f"{HOST}:{port}=bench"]
    args += ["--no-uvloop"] if no_uvloop else []
    args += ["--lb-engine", engine] if engine else []
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        wait_port(api_port)
        with httpx.Client(base_url=f"http://{HOST}:{api_port}") as client:
            for i, backend in enumerate(backends):
                response = client.put(f"/v1/services/bench/instances/n{i}",
                                      json={"address": HOST, "port": backend, "ttl": 3600})
                response.raise_for_status()
        pids = [process.pid]
        deadline = time.monotonic() + 30
        while workers > 1:  # until every worker runs (each binds the route itself)
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
            pids = [int(pid) for pid in children.split()]
            if len(pids) == workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pilotfish: {len(pids)} of {workers} workers started")
            time.sleep(0.05)
        wait_port(port)
        time.sleep(0.5)
        yield pids
    finally:
        process.terminate()
        process.wait()


def wrk(port: int, path: str, connections: int, seconds: int, close: bool) -> Result:
    """Run wrk (one thread, CPU 0) and parse requests/s or transfer/s and p99."""
    args = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
            "--latency", f"http://{HOST}:{port}{path}"]
    if close:
        args[5:5] = ["-H", "Connection: close"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99[1]) * scale[p99[2]] if p99 else float("nan")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx[1]) if non2xx else 0
    if path == "/bulk":
        transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
        units = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
        rate = float(transfer[1]) * units[transfer[2]] if transfer else 0.0
    else:
        requests = re.search(r"Requests/sec:\s+([\d.]+)", out)
        rate = float(requests[1]) if requests else 0.0
    return Result(rate, p99_ms, 0.0, errors)


LOADS = {
    "keep-alive": ("/small", 50, False),
    "close": ("/small", 50, True),
    "bulk": ("/bulk", 4, False),
}


def measure(pid: int | list[int], port: int, load: str, seconds: int) -> Result:
    """One wrk run of `load` through the balancer at port, with its CPU seconds (summed over
    its processes when given several: pilotfish's workers)."""
    pids = pid if isinstance(pid, list) else [pid]
    path, connections, close = LOADS[load]
    before = sum(cpu_seconds(one) for one in pids)
    result = wrk(port, path, connections, seconds, close)
    result.cpu = sum(cpu_seconds(one) for one in pids) - before
    return result


def cost(result: Result, seconds: int) -> float:
    """CPU microseconds the balancer spent per request (per MiB for bulk)."""
    units = result.rate * seconds
    return result.cpu * 1e6 / units if units else float("nan")


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--loads", default=",".join(LOADS))
    parser.add_argument("--engine", choices=("epoll", "transports"), default=None,
                        help="pilotfish's --lb-engine (default: its own default)")
    args = parser.parse_args()
    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install nginx-light haproxy wrk", file=sys.stderr)
            return 1
    workdir = Path(tempfile.mkdtemp(prefix="pilotfish-lb-bench-"))
    backends = [free_port(), free_port()]
    ha_port, pf_port = free_port(), free_port()
    loads = args.loads.split(",")
    results: dict[str, dict[str, list[Result]]] = {
        load: {"haproxy": [], "pilotfish": []} for load in loads}
    try:
        with nginx(workdir, backends), haproxy(workdir, ha_port, backends) as ha_pid, \
                pilotfish(pf_port, backends, args.no_uvloop, args.engine) as pf_pid:
            for load in loads:  # warm-up
                measure(ha_pid, ha_port, load, 1)
                measure(pf_pid, pf_port, load, 1)
            for round_number in range(1, args.rounds + 1):
                for load in loads:
                    ha = measure(ha_pid, ha_port, load, args.seconds)
                    pf = measure(pf_pid, pf_port, load, args.seconds)
                    results[load]["haproxy"].append(ha)
                    results[load]["pilotfish"].append(pf)
                    unit = "MiB/s" if load == "bulk" else "req/s"
                    print(f"round {round_number} {load:10} haproxy {ha.rate:9.0f} {unit} "
                          f"p99 {ha.p99_ms:7.2f} ms cpu {ha.cpu:5.2f}s err {ha.errors} | "
                          f"pilotfish {pf.rate:9.0f} {unit} p99 {pf.p99_ms:7.2f} ms "
                          f"cpu {pf.cpu:5.2f}s err {pf.errors} | ratio "
                          f"{pf.rate / ha.rate if ha.rate else float('nan'):.2f}", flush=True)
                    if pf.errors:  # a crash or reset shows up here
                        print(f"  pilotfish errors in {load}: {pf.errors}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floors = {"keep-alive": 0.9, "close": 0.8, "bulk": 0.5}
    print(f"\nmedians over {args.rounds} rounds of {args.seconds}s "
          f"({'stdlib loop' if args.no_uvloop else 'uvloop'}, "
          f"engine {args.engine or 'default'}):")
    print(f"{'load':10} {'haproxy':>12} {'pilotfish':>12} {'ratio':>6} {'floor':>6} "
          f"{'p99 ha':>8} {'p99 pf':>8} {'cpu ha':>7} {'cpu pf':>7} {'cpu/unit ha':>11} "
          f"{'cpu/unit pf':>11} {'cpu ratio':>9}")
    for load in loads:
        ha_runs, pf_runs = results[load]["haproxy"], results[load]["pilotfish"]
        ratios = [p.rate / h.rate for h, p in zip(ha_runs, pf_runs, strict=True) if h.rate]
        cost_ratios = [cost(h, args.seconds) / cost(p, args.seconds)
                       for h, p in zip(ha_runs, pf_runs, strict=True)]
        ha_rate = statistics.median(r.rate for r in ha_runs)
        pf_rate = statistics.median(r.rate for r in pf_runs)
        print(f"{load:10} {ha_rate:12.0f} {pf_rate:12.0f} "
              f"{statistics.median(ratios):6.2f} {floors[load]:6.2f} "
              f"{statistics.median(r.p99_ms for r in ha_runs):8.2f} "
              f"{statistics.median(r.p99_ms for r in pf_runs):8.2f} "
              f"{statistics.median(r.cpu for r in ha_runs):7.2f} "
              f"{statistics.median(r.cpu for r in pf_runs):7.2f} "
              f"{statistics.median(cost(r, args.seconds) for r in ha_runs):11.1f} "
              f"{statistics.median(cost(r, args.seconds) for r in pf_runs):11.1f} "
              f"{statistics.median(cost_ratios):9.2f}")
    print("(rates: req/s, bulk MiB/s; p99 in ms; cpu: balancer CPU seconds per run;\n"
          " cpu/unit: CPU microseconds per request, or per MiB for bulk; cpu ratio: HAProxy's\n"
          " cost over pilotfish's, the throughput ratio to expect when both are CPU-bound)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
