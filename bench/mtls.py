"""mTLS benchmark: two pilotfish sidecar hops with mutual TLS between them, against HAProxy 2.6
in the same two-hop layout (`ssl crt … ca-file … verify required` on both hops, TLS 1.3), and
the plaintext pilotfish path (two LB hops) for reference, in one run.

    wrk ─► hop A (plain in, TLS out, client cert) ─► hop B (TLS in, verify, plain out) ─► nginx

pilotfish's hops are the sidecar's mesh code (`mesh.pump`, `mesh.outbound`, `mesh.inbound`,
certificates from a mesh CA) run without Docker; HAProxy's are two processes, one thread each.
Both hops of the layout under test run pinned to CPU 1, wrk and nginx to CPU 0 (two cores).
Loads, each `--rounds` times through each layout in turn:

- new connections: wrk -c 50 with `Connection: close` (every request a new connection, so a
  TLS handshake on the middle link; both sides resume TLS sessions as they can)
- throughput: wrk -c 4 GET of a 64 MiB file over keep-alive connections (MiB/s)

It prints each round and the medians; its last line is
`mtls new_conns_vs_haproxy=R1 throughput_vs_haproxy=R2` (median ratios of the same run).

    python bench/mtls.py [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/mtls.py` too

from bench.lb import HOST, Result, cpu_seconds, free_port, nginx, wait_port, wrk  # noqa: E402

DOMAIN = "bench.mesh"
LOADS = {"new_conns": ("/small", 50, True), "throughput": ("/bulk", 4, False)}
LAYOUTS = ("haproxy", "pilotfish-mtls", "pilotfish-plain")


def make_pki(folder: Path) -> None:
    """A mesh CA and certificates for `web` (hop A) and `db` (hop B), plus HAProxy's PEMs."""
    from pilotfish.mesh.ca import CertificateAuthority, create_ca
    from pilotfish.mesh.keys import csr_pem, key_pem, new_key

    cert, key = create_ca(str(folder), DOMAIN)
    authority = CertificateAuthority.load(str(cert), str(key), DOMAIN)
    for service in ("web", "db"):
        private = new_key()
        issued = authority.issue(csr_pem(private, service, DOMAIN), service, 7200)
        (folder / f"{service}.crt").write_text(issued.certificate)
        (folder / f"{service}.key").write_bytes(key_pem(private))
        (folder / f"{service}.pem").write_text(issued.certificate + key_pem(private).decode())


async def run_hop(side: str, folder: Path, listen: int, target: int) -> None:
    """One pilotfish mesh hop: `client` (outbound route to db as web) or `server` (inbound)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from pilotfish.catalog.interface import Snapshot
    from pilotfish.catalog.model import Instance
    from pilotfish.config import HostPort
    from pilotfish.mesh.identities import Identities
    from pilotfish.mesh.inbound import Inbound
    from pilotfish.mesh.intentions import Intention, Intentions
    from pilotfish.mesh.outbound import OutboundRoutes, Upstream
    from pilotfish.mesh.pump import Pump

    service = "web" if side == "client" else "db"
    identities = Identities(DOMAIN)
    key = load_pem_private_key((folder / f"{service}.key").read_bytes(), None)
    identities.install(service, (folder / f"{service}.crt").read_text(), key,  # type: ignore[arg-type]
                       (folder / "ca.crt").read_text(), time.time() + 7200)
    pump = Pump(asyncio.get_running_loop())
    if side == "server":
        rules = Intentions((Intention("web", "db", "allow"),))
        Inbound(pump, HostPort(HOST, listen), identities, rules.allows,
                lambda _: [(HOST, target)]).start()
    else:
        routes = OutboundRoutes(pump, identities, [Upstream(HostPort(HOST, listen), "db",
                                                            "web")])
        await routes.start(Snapshot(1, [Instance("db", "db-1", HOST, target, "lease",
                                                 meta={"mtls": "1"})]))
    print("ready", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def processes(*commands: list[str]) -> Iterator[list[int]]:
    """Start the commands pinned to CPU 1; their pids; stopped on exit."""
    started = [subprocess.Popen(["taskset", "-c", "1", *command], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for command in commands]
    try:
        yield [process.pid for process in started]
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait()


def haproxy_hops(folder: Path, front: int, middle: int, backend: int) -> list[list[str]]:
    """HAProxy as hop A (TLS out with web's certificate) and hop B (TLS in, verify required)."""
    common = ("global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 2s"
              "\n  timeout client 300s\n  timeout server 300s\n")
    ca = folder / "ca.crt"
    (folder / "hop-a.cfg").write_text(
        common + f"frontend f\n  bind {HOST}:{front}\n  default_backend b\nbackend b\n"
        f"  server db {HOST}:{middle} ssl crt {folder / 'web.pem'} ca-file {ca} "
        "verify required ssl-min-ver TLSv1.3\n")
    (folder / "hop-b.cfg").write_text(
        common + f"frontend f\n  bind {HOST}:{middle} ssl crt {folder / 'db.pem'} ca-file {ca} "
        f"verify required ssl-min-ver TLSv1.3\n  default_backend b\nbackend b\n"
        f"  server nginx {HOST}:{backend}\n")
    return [["haproxy", "-f", str(folder / "hop-a.cfg")],
            ["haproxy", "-f", str(folder / "hop-b.cfg")]]


def mtls_hops(folder: Path, front: int, middle: int, backend: int) -> list[list[str]]:
    """pilotfish's mesh as hop A (outbound route) and hop B (inbound port)."""
    me = [sys.executable, str(Path(__file__).resolve()), "--hop"]
    return [[*me, "client", str(folder), str(front), str(middle)],
            [*me, "server", str(folder), str(middle), str(backend)]]


def start_plain(folder: Path, front: int, middle: int, backend: int) -> list[list[str]]:
    """Two `pilotfish up` LB hops whose one instance each is registered through their API."""
    commands = []
    for listen, name in ((front, "a"), (middle, "b")):
        api = free_port()
        (folder / f"api-{name}").write_text(str(api))
        commands.append([sys.executable, "-m", "pilotfish", "up", "--api", f"{HOST}:{api}",
                         "--dns", "off", "--lb-api", "off", "--lb-check-interval", "0",
                         "--route", f"{HOST}:{listen}=hop{name}", "--workers", "1",
                         "--log-level", "warning"])
    return commands


def register_plain(folder: Path, middle: int, backend: int) -> None:
    """Point hop a at hop b, and hop b at nginx."""
    import httpx

    for name, target in (("a", middle), ("b", backend)):
        api = int((folder / f"api-{name}").read_text())
        wait_port(api)
        httpx.put(f"http://{HOST}:{api}/v1/services/hop{name}/instances/n",
                  json={"address": HOST, "port": target, "ttl": 3600}).raise_for_status()
    time.sleep(0.5)


def measure(pids: list[int], port: int, load: str, seconds: int) -> Result:
    """One wrk run through a layout, with both hops' CPU seconds."""
    path, connections, close = LOADS[load]
    before = sum(cpu_seconds(pid) for pid in pids)
    result = wrk(port, path, connections, seconds, close)
    result.cpu = sum(cpu_seconds(pid) for pid in pids) - before
    return result


def main() -> int:
    """Run the rounds and print the table; the last line holds the two ratios."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--hop", nargs=4, metavar=("SIDE", "DIR", "LISTEN", "TARGET"),
                        help=argparse.SUPPRESS)  # one pilotfish mesh hop (internal)
    args = parser.parse_args()
    if args.hop:
        from pilotfish.loop import run

        side, folder, listen, target = args.hop
        run(run_hop(side, Path(folder), int(listen), int(target)))
        return 0
    for tool in ("nginx", "haproxy", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install nginx-light haproxy wrk", file=sys.stderr)
            return 1
    workdir = Path(tempfile.mkdtemp(prefix="pilotfish-mtls-bench-"))
    results: dict[str, dict[str, list[Result]]] = {
        load: {layout: [] for layout in LAYOUTS} for load in LOADS}
    try:
        make_pki(workdir)
        backend = free_port()
        ports = {layout: (free_port(), free_port()) for layout in LAYOUTS}
        builders = {"haproxy": haproxy_hops, "pilotfish-mtls": mtls_hops,
                    "pilotfish-plain": start_plain}
        with contextlib.ExitStack() as stack:
            stack.enter_context(nginx(workdir, [backend]))
            pids: dict[str, list[int]] = {}
            for layout in LAYOUTS:
                front, middle = ports[layout]
                pids[layout] = stack.enter_context(
                    processes(*builders[layout](workdir, front, middle, backend)))
                if layout == "pilotfish-plain":
                    register_plain(workdir, middle, backend)
                wait_port(front)
            for layout in LAYOUTS:  # warm-up
                for load in LOADS:
                    measure(pids[layout], ports[layout][0], load, 1)
            for round_number in range(1, args.rounds + 1):
                for load in LOADS:
                    line = []
                    for layout in LAYOUTS:
                        result = measure(pids[layout], ports[layout][0], load, args.seconds)
                        results[load][layout].append(result)
                        line.append(f"{layout} {result.rate:8.0f} cpu {result.cpu:5.2f}s "
                                    f"err {result.errors}")
                    unit = "MiB/s" if load == "throughput" else "req/s"
                    print(f"round {round_number} {load:10} ({unit}) " + " | ".join(line),
                          flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = {}
    print(f"\nmedians over {args.rounds} rounds of {args.seconds}s (hops on CPU 1, wrk and "
          "nginx on CPU 0):")
    for load in LOADS:
        runs = results[load]
        medians = {layout: statistics.median(r.rate for r in runs[layout]) for layout in LAYOUTS}
        ratios[load] = statistics.median(
            p.rate / h.rate for h, p in zip(runs["haproxy"], runs["pilotfish-mtls"], strict=True)
            if h.rate)
        plain = statistics.median(
            m.rate / p.rate for m, p in zip(runs["pilotfish-mtls"], runs["pilotfish-plain"],
                                            strict=True) if p.rate)
        print(f"{load:10} haproxy {medians['haproxy']:9.0f}  pilotfish mTLS "
              f"{medians['pilotfish-mtls']:9.0f}  pilotfish plain {medians['pilotfish-plain']:9.0f}"
              f"  mTLS/haproxy {ratios[load]:.2f}  mTLS/plain {plain:.2f}")
    print(f"mtls new_conns_vs_haproxy={ratios['new_conns']:.2f} "
          f"throughput_vs_haproxy={ratios['throughput']:.2f}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
