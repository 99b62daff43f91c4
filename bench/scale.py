"""Scale benchmark: what DNS costs the registry, and what writes cost DNS, at 10,000 instances.

A catalog of one service of 5,000 instances (`big`), 1,000 services of 5 (`s0000`...) and
one of 3 (`three`),
registered through the HTTP API of `pilotfish up` (embedded backend) on one lease, 32 requests
in flight. It prints:

- registrations/s with DNS on and with `--dns off` (separate processes, same requests);
- DNS latency p50/p99 (UDP, A and SRV of random small services and SRV of `big`, from a
  separate probe process) while 100 writes/s change instances, half of them in `big`;
- SRV queries/s (dnsperf) for `big` against a 3-instance service, and their ratio.

Targets (issue 13): DNS-on >= 0.8x DNS-off; p99 <= 5 ms during writes; big SRV >= 0.5x small.

    python -m bench.scale [--big 5000] [--small 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.registering import register_all

DOMAIN = "bench"


def query(name: str, qtype: int, edns: bool = False) -> bytes:
    """A DNS query in wire form (the probe process gets this function's source too)."""
    import random
    import struct
    wire = struct.pack("!HHHHHH", random.getrandbits(16), 0, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        wire += bytes([len(label)]) + label.encode()
    wire += b"\x00" + struct.pack("!HH", qtype, 1)
    return wire + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if edns else b"")


def start(workdir: Path, dns: bool) -> tuple[subprocess.Popen[bytes], str, int | None]:
    """`pilotfish up` on ephemeral ports; returns (process, API URL, DNS port or None)."""
    log = workdir / f"pilotfish-{'dns' if dns else 'nodns'}.err"
    err = open(log, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "up", "--api", "127.0.0.1:0", "--dns",
         "127.0.0.1:0" if dns else "off", "--domain", DOMAIN, "--workers", "1",
         "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
        text = log.read_text()
        api = re.search(r"registry API listening on (http://\S+)", text)
        port = re.search(r"dns listening on udp://\S+:(\d+)", text)
        if api and (port or not dns):
            return process, api.group(1), int(port.group(1)) if port else None
        time.sleep(0.05)
    raise RuntimeError("pilotfish did not start: " + log.read_text())


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def catalog(big: int, small: int) -> Iterator[tuple[str, str, str, int]]:
    """(service, id, address, port): one big service, `small` services of 5, one of 3."""
    for i in range(big):
        yield "big", f"big-{i}", f"10.1.{i >> 8 & 255}.{i & 255}", 8000
    for s in range(small):
        for i in range(5):
            n = s * 5 + i
            yield f"s{s:04d}", f"s{s:04d}-{i}", f"10.2.{n >> 8 & 255}.{n & 255}", 9000
    for i in range(3):
        yield "three", f"three-{i}", f"10.3.0.{i + 1}", 7000


async def write_steadily(api: str, lease: str, rows: list[tuple[str, str, str, int]],
                         per_second: int, seconds: float) -> int:
    """Change instances (weight flips) at a steady rate, half of them in `big`."""
    big = [r for r in rows if r[0] == "big"]
    small = [r for r in rows if r[0] != "big"]
    rng = random.Random(7)
    done = 0
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        started = time.perf_counter()
        tasks = set()
        for n in range(int(per_second * seconds)):
            delay = started + n / per_second - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            service, instance_id, address, port = rng.choice(big if n % 2 else small)

            async def one(service: str = service, instance_id: str = instance_id,
                          address: str = address, port: int = port, weight: int = n % 7 + 1,
                          ) -> None:
                nonlocal done
                try:
                    response = await client.put(
                        f"/v1/services/{service}/instances/{instance_id}",
                        json={"address": address, "port": port, "lease": lease,
                              "weight": weight})
                except httpx.HTTPError:  # a registry that cannot keep up: count what it did
                    return
                if response.is_success:
                    done += 1

            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return done


PROBE = inspect.getsource(query) + r"""
import random, socket, sys, time
port, seconds, small = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1)
names = []
for s in range(small):
    names.append(query(f"s{s:04d}.service.bench", 1))
    names.append(query(f"_s{s:04d}._tcp.service.bench", 33))
big = query("_big._tcp.service.bench", 33, True)
rng = random.Random(3)
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    wire = big if rng.random() < 0.2 else rng.choice(names)
    sent = time.perf_counter()
    sock.sendto(wire, ("127.0.0.1", port))
    try:
        while sock.recv(65535)[:2] != wire[:2]:
            pass
        print(f"{(time.perf_counter() - sent) * 1000:.4f}")
    except TimeoutError:
        print("1000")
    time.sleep(0.002)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_answered(port: int, name: str, timeout: float = 120) -> None:
    """Wait until the SRV name has records (the zone has caught up with the registrations)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        while time.monotonic() < deadline:
            sock.sendto(query(name, 33), ("127.0.0.1", port))
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                continue
            if reply[3] & 0x0F == 0 and reply[6:8] != b"\x00\x00":
                return
            time.sleep(0.2)
    raise RuntimeError(f"{name} SRV has no records after {timeout:g} s")


def dnsperf_qps(port: int, name: str, seconds: float) -> tuple[float, str]:
    """Queries/s dnsperf gets for one SRV name (UDP, EDNS0), and the response size."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as queries:
        queries.write(f"{name} SRV\n")
        queries.flush()
        out = subprocess.run(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries.name, "-l",
             str(seconds), "-c", "2", "-T", "2", "-q", "50", "-e"],
            capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"Queries per second:\s+([\d.]+)", out)
    size = re.search(r"Average packet size:.*response\s+(\d+)", out)
    return (float(match.group(1)) if match else float("nan"),
            size.group(1) if size else "?")


def main() -> int:
    """Run the three measurements and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", type=int, default=5000)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--writes", type=int, default=100, help="writes per second")
    args = parser.parse_args()
    if shutil.which("dnsperf") is None:
        print("bench/scale.py: dnsperf is not installed", file=sys.stderr)
        return 2
    rows = list(catalog(args.big, args.small))
    print(f"catalog: {len(rows)} instances ({args.big} in one service, {args.small} x 5)",
          flush=True)
    rates: dict[bool, float] = {}
    cpu: dict[bool, float] = {}
    with tempfile.TemporaryDirectory(prefix="pilotfish-bench-scale-") as tmp:
        workdir = Path(tmp)
        for dns_on in (False, True):
            process, api, port = start(workdir, dns_on)
            try:
                cpu_before = cpu_seconds(process.pid)
                rates[dns_on], lease = asyncio.run(register_all(api, rows))
                if port is not None:  # the zone catches up: its work counts too
                    wait_answered(port, f"_big._tcp.service.{DOMAIN}")
                cpu[dns_on] = (cpu_seconds(process.pid) - cpu_before) / len(rows)
                print(f"registrations/s with DNS {'on ' if dns_on else 'off'}: "
                      f"{rates[dns_on]:8.0f}   server CPU per registration "
                      f"{cpu[dns_on] * 1e6:6.0f} us", flush=True)
                if not dns_on or port is None:
                    continue
                for name in ("_s0000._tcp", "_three._tcp", "_big._tcp"):
                    wait_answered(port, f"{name}.service.{DOMAIN}")
                probe = subprocess.Popen(
                    [sys.executable, "-c", PROBE, str(port), str(args.seconds),
                     str(args.small)], stdout=subprocess.PIPE, text=True)
                done = asyncio.run(write_steadily(api, lease, rows, args.writes,
                                                  args.seconds))
                out, _ = probe.communicate(timeout=args.seconds + 30)
                latencies = sorted(float(x) for x in out.split())
                p50 = statistics.median(latencies)
                p99 = latencies[int(len(latencies) * 0.99)]
                print(f"DNS during {done / args.seconds:.0f} writes/s: p50 {p50:.3f} ms  "
                      f"p99 {p99:.3f} ms  ({len(latencies)} queries)", flush=True)
                small_qps, small_size = dnsperf_qps(port, f"_three._tcp.service.{DOMAIN}",
                                                    args.seconds)
                big_qps, big_size = dnsperf_qps(port, f"_big._tcp.service.{DOMAIN}",
                                                args.seconds)
                print(f"SRV q/s: 3-instance service {small_qps:,.0f} ({small_size} B answers), "
                      f"{args.big}-instance service {big_qps:,.0f} ({big_size} B answers); "
                      f"ratio {big_qps / small_qps:.2f}", flush=True)
            finally:
                stop(process)
    print(f"registrations/s DNS on / off: {rates[True] / rates[False]:.2f}   by server CPU "
          f"per registration (less sensitive to a busy machine): {cpu[False] / cpu[True]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
