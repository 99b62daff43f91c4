"""Consumers nobody here wrote: HAProxy 2.6 filling servers from SRV, Unbound as a stub resolver.

The HAProxy and Unbound configurations are the ones docs/dns.md's "Consuming pilotfish DNS"
section shows.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from tests.dns.conftest import DOMAIN, DnsStack
from tests.fixtures.servers import free_port, terminate

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None,
                                   reason="HAProxy is not installed (scripts/test installs it)")
needs_unbound = pytest.mark.skipif(shutil.which("unbound") is None,
                                   reason="Unbound is not installed (scripts/test installs it)")

# docs/dns.md's resolvers section: removals and additions reach HAProxy within 2 s. HAProxy
# drops any answer bigger than accepted_payload_size, over TCP too; UDP stays at --dns-udp-size.
RESOLVERS = """
resolvers {name}
    nameserver pf {address}
    accepted_payload_size 65535
    resolve_retries 2
    timeout resolve 500ms
    timeout retry 500ms
    hold valid 10s
    hold obsolete 0s
    hold nx 1s
    hold other 1s
    hold refused 1s
    hold timeout 10s
"""


class Backend(socketserver.ThreadingTCPServer):
    """A TCP server on 127.0.0.1 that answers every connection with its own port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        self.port: int = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(str(self.server.server_address[1]).encode())  # type: ignore[attr-defined]


@contextmanager
def backends(count: int) -> Iterator[list[Backend]]:
    servers = [Backend() for _ in range(count)]
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class HAProxy:
    """A real HAProxy with a stats socket, fed by pilotfish DNS."""

    def __init__(self, config: str, workdir: Path) -> None:
        self.stats = workdir / "stats.sock"
        path = workdir / "haproxy.cfg"
        path.write_text(f"global\n    stats socket {self.stats} mode 600 level admin\n"
                        + config)
        self.process = subprocess.Popen(["haproxy", "-f", str(path), "-db"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.stats.exists():
            assert self.process.poll() is None, self.process.communicate()[0].decode()
            assert time.monotonic() < deadline, "HAProxy did not start"
            time.sleep(0.05)

    def servers(self, backend: str) -> set[tuple[str, str, str]]:
        """(server name, address, port) of every server of a backend that has an address."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats))
            sock.sendall(f"show servers state {backend}\n".encode())
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        rows = set()
        for line in out.decode().splitlines():
            fields = line.split()
            if len(fields) > 18 and not line.startswith("#") and fields[4] != "-":
                rows.add((fields[3], fields[4], fields[18]))
        return rows

    def stop(self) -> None:
        terminate(self.process)


@contextmanager
def haproxy(config: str) -> Iterator[HAProxy]:
    with tempfile.TemporaryDirectory(prefix="pilotfish-haproxy-") as tmp:
        running = HAProxy(config, Path(tmp))
        try:
            yield running
        finally:
            running.stop()


def defaults() -> str:
    return ("defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 5s\n"
            "    timeout server 5s\n")


def hit(port: int) -> int | None:
    """One connection through HAProxy: the port of the backend that answered, if any."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            data = sock.recv(16)
    except OSError:
        return None
    return int(data) if data else None


def wait_until(predicate: object, timeout: float, step: float = 0.05) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(step)
    return time.monotonic() - started


@needs_haproxy
def test_haproxy_uses_every_instance_on_one_host_and_follows_changes(stack: DnsStack) -> None:
    with ExitStack() as stack_:
        servers = stack_.enter_context(backends(4))
        for n, server in enumerate(servers[:3]):
            stack.register("hx", f"hx-{n}", "127.0.0.1", server.port)
        stack.wait_for(f"_hx._tcp.service.{DOMAIN}", "SRV", 3)
        front = free_port()
        proxy = stack_.enter_context(haproxy(
            RESOLVERS.format(name="pf", address=f"{stack.host}:{stack.port}") + defaults()
            + f"listen hx\n    bind 127.0.0.1:{front}\n    balance roundrobin\n"
            f"    server-template hx 6 _hx._tcp.service.{DOMAIN} resolvers pf "
            "init-addr none\n"))
        wait_until(lambda: len(proxy.servers("hx")) == 3, 10)
        counts = Counter(hit(front) for _ in range(30))
        assert {server.port for server in servers[:3]} <= set(counts), counts  # all three used

        # an addition is taken within 2 s
        added = time.monotonic()
        stack.register("hx", "hx-3", "127.0.0.1", servers[3].port)
        wait_until(lambda: hit(front) == servers[3].port, 5, step=0.01)
        took = time.monotonic() - added
        print(f"HAProxy: new instance got traffic {took * 1000:.0f} ms after registration")
        assert took <= 2.0

        # a removal stops traffic within 2 s, the last instance of a service included
        for victim in (servers[0], servers[1], servers[2], servers[3]):
            instance = f"hx-{servers.index(victim)}"
            removed = time.monotonic()
            stack.deregister("hx", instance)
            last_seen = removed
            while time.monotonic() - removed < 4:
                if hit(front) == victim.port:
                    last_seen = time.monotonic()
                time.sleep(0.01)
            print(f"HAProxy: {instance} last served {(last_seen - removed) * 1000:.0f} ms "
                  "after deregistration")
            assert last_seen - removed <= 2.0, instance
        assert hit(front) is None


@needs_haproxy
def test_haproxy_server_list_of_a_big_service_is_stable(stack: DnsStack) -> None:
    for n in range(60):
        stack.register("wide", f"wide-{n}", f"10.30.0.{n + 1}", 8080, ttl=60)
    stack.wait_for(f"_wide._tcp.service.{DOMAIN}", "SRV", 60, tcp=True)
    address = f"{stack.host}:{stack.port}"
    config = (RESOLVERS.format(name="udp", address=address)
              + RESOLVERS.format(name="tcp", address=f"tcp@{address}") + defaults())
    for name in ("udp", "tcp"):
        config += (f"backend wide_{name}\n    server-template w 80 _wide._tcp.service.{DOMAIN} "
                   f"resolvers {name} init-addr none\n")
    with haproxy(config) as proxy:
        wait_until(lambda: proxy.servers("wide_udp") and len(proxy.servers("wide_tcp")) == 60,
                   10)
        time.sleep(1.5)  # a few resolutions in
        first = {name: proxy.servers(f"wide_{name}") for name in ("udp", "tcp")}
        changes = Counter[str]()
        until = time.monotonic() + 10
        while time.monotonic() < until:
            for name, seen in first.items():
                if proxy.servers(f"wide_{name}") != seen:
                    changes[name] += 1
            time.sleep(0.25)
        print(f"HAProxy over UDP keeps {len(first['udp'])} of 60 (truncated answer), over TCP "
              f"{len(first['tcp'])}; changes in 10 s: {dict(changes)}")
        assert not changes
        assert len(first["tcp"]) == 60 and len(first["udp"]) >= 10


UNBOUND = """
server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-not-query-localhost: no
    module-config: "iterator"
    qname-minimisation: yes
    qname-minimisation-strict: yes
    local-zone: "{domain}." nodefault
    local-zone: "test." nodefault
    domain-insecure: "{domain}"
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
remote-control:
    control-enable: no
stub-zone:
    name: "{domain}"
    stub-addr: {dns}
"""


@needs_unbound
def test_unbound_with_strict_qname_minimisation_resolves_through_pilotfish(
        stack: DnsStack) -> None:
    stack.register("ub", "ub-1", "10.40.0.1", 8001, tags=["blue"])
    stack.register("ub", "ub-2", "10.40.0.2", 8002)
    stack.wait_for(f"ub.service.{DOMAIN}", "A", 2)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pilotfish-unbound-") as tmp:
        config = Path(tmp) / "unbound.conf"
        config.write_text(UNBOUND.format(port=port, workdir=tmp, domain=DOMAIN,
                                         dns=f"{stack.host}@{stack.port}"))
        check = subprocess.run(["unbound-checkconf", str(config)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        unbound = subprocess.Popen(["unbound", "-d", "-c", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            def ask(name: str, rdtype: str) -> dns.message.Message:
                return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                     port=port, timeout=3)

            deadline = time.monotonic() + 10
            while True:
                try:
                    ask(DOMAIN, "SOA")
                    break
                except (TimeoutError, OSError, dns.exception.Timeout):
                    assert unbound.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)

            def records(name: str, rdtype: str) -> list[str]:
                response = ask(name, rdtype)
                assert response.rcode() == dns.rcode.NOERROR, (name, response)
                return sorted(rr.to_text() for rrset in response.answer
                              if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rr in rrset)

            srv = records(f"_ub._tcp.service.{DOMAIN}", "SRV")
            assert [r.split()[2] for r in srv] == ["8001", "8002"]
            assert records(f"ub.service.{DOMAIN}", "A") == ["10.40.0.1", "10.40.0.2"]
            assert records(f"blue.ub.service.{DOMAIN}", "A") == ["10.40.0.1"]
            assert len(records(f"_ub._blue.service.{DOMAIN}", "SRV")) == 1
            target = srv[0].split()[3]
            assert records(target, "A") == ["10.40.0.1"]
            missing = ask(f"_nope._tcp.service.{DOMAIN}", "SRV")
            assert missing.rcode() == dns.rcode.NXDOMAIN
        finally:
            terminate(unbound)



needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None,
                                 reason="nginx is not installed (scripts/test installs it)")


class _HelloHttp(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = str(self.server.server_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@needs_nginx
def test_nginx_resolver_follows_the_service(stack: DnsStack) -> None:
    """docs/dns.md's nginx snippet: `resolver` with a port, the upstream in a variable."""
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HelloHttp)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = backend.server_address[1]
    listen = free_port()
    try:
        with tempfile.TemporaryDirectory(prefix="pilotfish-nginx-") as tmp:
            stack.register("ngx", "ngx-1", "127.0.0.1", port)
            stack.wait_for(f"ngx.service.{DOMAIN}", "A", 1)
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
                f"events {{}}\nhttp {{\n  access_log off;\n"
                f"  resolver {stack.host}:{stack.port} valid=1s ipv6=off;\n"
                f"  server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n"
                f"      set $web ngx.service.{DOMAIN};\n"
                f"      proxy_pass http://$web:{port};\n    }}\n  }}\n}}\n")
            nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", tmp],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

            def status() -> int:
                try:
                    return httpx.get(f"http://127.0.0.1:{listen}/", timeout=2).status_code
                except httpx.HTTPError:
                    return 0

            try:
                wait_until(lambda: status() == 200, 10)
                stack.deregister("ngx", "ngx-1")  # NXDOMAIN: nginx answers 502 within ~1 s
                took = wait_until(lambda: status() == 502, 5)
                stack.register("ngx", "ngx-2", "127.0.0.1", port)
                took = max(took, wait_until(lambda: status() == 200, 5))
                print(f"nginx followed a removal and an addition, each within {took:.2f} s")
            finally:
                terminate(nginx)
    finally:
        backend.shutdown()
        backend.server_close()


needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("ip") is None,
    reason="Prometheus or iproute2 is not installed")

PROMETHEUS = """
global:
  scrape_interval: 1h
scrape_configs:
  - job_name: prom
    dns_sd_configs:
      - names: [_prom._tcp.service.{domain}]
        type: SRV
        refresh_interval: 1s
"""


@needs_prometheus
def test_prometheus_dns_sd_finds_every_instance() -> None:
    """Prometheus resolves through the system resolver (port 53), so everything runs in a
    network namespace of the test's own whose resolv.conf names pilotfish on 127.0.0.1:53."""
    netns = f"pf-prom-{free_port()}"
    etc = Path("/etc/netns") / netns
    subprocess.run(["ip", "netns", "add", netns], check=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        inside = ["ip", "netns", "exec", netns]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="pilotfish-prometheus-") as tmp:
            processes.append(subprocess.Popen(
                [*inside, sys.executable, "-m", "pilotfish", "up", "--api", "127.0.0.1:8500",
                 "--dns", "127.0.0.1:53", "--domain", DOMAIN],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            def curl(*args: str) -> str:
                result = subprocess.run([*inside, "curl", "-sf", "--max-time", "2", *args],
                                        capture_output=True, text=True)
                return result.stdout if result.returncode == 0 else ""

            wait_until(lambda: curl("http://127.0.0.1:8500/v1/services"), 20, step=0.2)
            for n in range(3):  # three instances on one host
                body = json.dumps({"address": "10.50.0.1", "port": 9100 + n, "ttl": 60})
                assert curl("-X", "PUT", "-H", "content-type: application/json", "-d", body,
                            f"http://127.0.0.1:8500/v1/services/prom/instances/prom-{n}")
            config = Path(tmp) / "prometheus.yml"
            config.write_text(PROMETHEUS.format(domain=DOMAIN))
            processes.append(subprocess.Popen(
                [*inside, "prometheus", f"--config.file={config}",
                 f"--storage.tsdb.path={tmp}/data", "--web.listen-address=127.0.0.1:9090"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

            def targets() -> set[str]:
                text = curl("http://127.0.0.1:9090/api/v1/targets")
                if not text:
                    return set()
                active = json.loads(text)["data"]["activeTargets"]
                return {t["labels"]["instance"] for t in active}

            wait_until(lambda: len(targets()) == 3, 30, step=0.5)
            names = {f"{9100 + n}.0a320001.addr.{DOMAIN}" for n in range(3)}
            assert targets() == {f"{name}:{name.split('.')[0]}" for name in names}
            for name in names:  # what Prometheus scrapes: glibc resolves the SRV targets
                lookup = subprocess.run([*inside, "getent", "hosts", name],
                                        capture_output=True, text=True)
                assert lookup.stdout.split()[:1] == ["10.50.0.1"], lookup
    finally:
        for process in processes:
            terminate(process)
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(etc, ignore_errors=True)
