"""Multi-host timings on three test hosts (network namespaces with their own Docker engines).

Reuses the harness and scenarios of tests/cluster/: for each backend (a 3-member etcd
cluster, a 3-server ZooKeeper ensemble, one member per host) it measures, several times,

  cross-host register -> answered  container started on one host -> in the other hosts' DNS
  partition -> gone                a host's link cut -> its containers gone from the others
  heal -> back                     the link back -> its containers back on the others
  host loss -> gone                everything of one host SIGKILLed -> gone from the others

and the request load the hosts put on the backend while idle, for several TTLs (keepalives
and the readers' freshness checks; counted by etcd's gRPC metrics or ZooKeeper's `mntr`).
It prints medians, and the etcd/zk ratio. There is no peer to run beside it: no Consul
server can be installed here and nothing else does multi-host discovery with these parts.

    python -m bench.cluster [--backends etcd,zk] [--repeat 5] [--ttls 3,10,30]

Needs root (namespaces, dockerd), like the tests. Takes about 4 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from collections import defaultdict

from tests.cluster import scenarios
from tests.cluster.backends import HostEtcd, HostZooKeeper
from tests.cluster.hosts import TTL, Cluster
from tests.cluster.probes import wait_all
from tests.cluster.workload import Workload
from tests.fixtures.zookeeper import four_letter

LOAD_WINDOW = 20.0  # seconds of idle traffic counted per TTL
EXPIRY = "after lease expiry"
ROWS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "cross-host register -> answered (DNS)": ("across", ("started -> answered on",), ()),
    "cross-host register -> balanced (LB)": ("across", ("started -> balanced in",), ()),
    "partition -> gone (DNS)": ("partition", ("apps gone on",), ()),
    "partition -> cut-off host reports stale": ("partition", ("DNS /health stale",), ()),
    "heal -> back (DNS)": ("partition", ("apps back on",), ()),
    "host loss -> gone (DNS)": ("host loss", ("apps gone on",), (EXPIRY,)),
    "host loss -> gone (LB)": ("host loss", ("apps gone in",), (EXPIRY,)),
    "host loss: lease expiry -> gone (DNS)": ("host loss", ("apps gone on", EXPIRY), ()),
}
"""Table row: (scenario, words the measurement's name has, words it must not have)."""


def backend_requests(cluster: Cluster) -> dict[str, float]:
    """Requests every member has handled so far, by kind (running members only)."""
    counts: dict[str, float] = defaultdict(float)
    backend = cluster.backend
    if isinstance(backend, HostEtcd):
        for member in backend.members:
            if not member.running:
                continue
            url = f"http://{member.endpoint}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            for line in text.splitlines():
                if line.startswith(("grpc_server_handled_total{",
                                    "grpc_server_msg_received_total{")):
                    labels, value = line.rsplit(" ", 1)
                    method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                    streamed = "msg_received" in labels
                    if streamed == ("stream" in labels):  # unary calls, or stream messages
                        counts[method] += float(value)
    elif isinstance(backend, HostZooKeeper):
        for server in backend.servers:
            if not server.running:
                continue
            stats = four_letter(server.client_port, "mntr", host=server.net_host.address)
            for line in stats.splitlines():
                key, _, value = line.partition("\t")
                if key == "zk_packets_received":
                    counts["packets"] += float(value)
    return counts


def idle_load(cluster: Cluster, work: Workload, ttls: list[int]) -> list[tuple[int, float,
                                                                              dict[str, float]]]:
    """For each TTL: restart every host's pilotfish with it, then count requests while idle."""
    rows = []
    for ttl in ttls:
        cluster.ttl = ttl
        for host in cluster.hosts:
            cluster.stop_pilotfish(host)
            cluster.start_pilotfish(host)
        scenarios.baseline(cluster, work)
        time.sleep(2.0)
        before = backend_requests(cluster)
        time.sleep(LOAD_WINDOW)
        after = backend_requests(cluster)
        rates = {kind: (after[kind] - before.get(kind, 0.0)) / LOAD_WINDOW for kind in after}
        rates = {kind: rate for kind, rate in rates.items() if rate > 0}
        rows.append((ttl, sum(rates.values()), rates))
    return rows


def measure(backend: str, repeat: int, ttls: list[int]) -> tuple[dict[str, list[float]],
                                                                 list[tuple[int, float,
                                                                            dict[str, float]]]]:
    """Every timing of one backend, several times each, and its idle load per TTL."""
    found: dict[str, list[float]] = defaultdict(list)
    with Cluster(backend) as cluster:
        work = Workload(cluster)
        timings = scenarios.Timings(backend)
        for _ in range(repeat):
            app = scenarios.across_hosts(cluster, work, timings)
            work.stop(app)
            wait_all(scenarios.in_dns(cluster.hosts, scenarios.lacks({app.endpoint}), "gone"),
                     10.0)
        for _ in range(repeat):
            scenarios.partition(cluster, work, timings)
        load = idle_load(cluster, work, [*ttls, TTL])  # back to the harness's TTL at the end
        scenarios.host_loss(cluster, work, timings, backend)
    for scenario, what, seconds, _ in timings.rows:
        for name, (where, words, absent) in ROWS.items():
            if scenario == where and all(w in what for w in words) \
                    and not any(w in what for w in absent):
                found[name].append(seconds)
    return found, load[:-1]


def main() -> None:
    """Run the chosen backends and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="etcd,zk")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ttls", default="3,10,30")
    args = parser.parse_args()
    ttls = [int(ttl) for ttl in args.ttls.split(",")]
    results = {}
    loads = {}
    for backend in args.backends.split(","):
        results[backend], loads[backend] = measure(backend, args.repeat, ttls)
    names = list(dict.fromkeys(name for found in results.values() for name in found))
    print(f"\nmulti-host timings, seconds (median of n; TTL {TTL} s, keepalive every "
          f"{TTL / 3:.1f} s):")
    header = f"{'':44}" + "".join(f"{b + ' median':>13}{'n':>4}" for b in results)
    if {"etcd", "zk"} <= results.keys():
        header += f"{'etcd/zk':>9}"
    print(header)
    for name in names:
        line = f"{name:44}"
        medians = {}
        for backend, found in results.items():
            values = found.get(name, [])
            medians[backend] = statistics.median(values) if values else float("nan")
            line += f"{medians[backend]:13.3f}{len(values):4d}"
        if {"etcd", "zk"} <= results.keys() and medians["zk"]:
            line += f"{medians['etcd'] / medians['zk']:9.2f}"
        print(line)
    print("\nidle backend load with 3 hosts (one sidecar lease each, keepalive every TTL/3):")
    print(f"{'backend':8}{'TTL':>5}{'requests/s':>12}{'per host':>10}  by kind")
    for backend, rows in loads.items():
        for ttl, total, rates in rows:
            kinds = ", ".join(f"{kind} {rate:.2f}" for kind, rate in sorted(rates.items()))
            print(f"{backend:8}{ttl:5d}{total:12.2f}{total / 3:10.2f}  {kinds}")


if __name__ == "__main__":
    main()
