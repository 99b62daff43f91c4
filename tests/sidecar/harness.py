"""What the sidecar's end-to-end tests share: a registry with DNS, sidecar processes on the test
engine, and waits on what the catalog and DNS answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx

from pilotfish.catalog import Catalog, Instance, Snapshot
from tests.fixtures.docker import DockerEngine
from tests.fixtures.process import PilotfishProcess, StartPilotfish, start_pilotfish
from tests.fixtures.watching import wait_until

DOMAIN = "pilotfish"
ADVERTISE = "127.0.0.1"
STARTUP = 60.0  # importing pilotfish took ~20 s once on this 2-core machine under full load


@dataclass
class Registry:
    """`pilotfish up` serving the API (on memory://) and DNS, for sidecars to register into."""

    process: PilotfishProcess

    @property
    def url(self) -> str:
        """The http:// catalog URL sidecars and tests open."""
        return self.process.api

    @property
    def dns(self) -> tuple[str, int]:
        """Host and port of the DNS listener."""
        host, _, port = self.process.listening["dns"].rpartition(":")
        return host, int(port)

    def addresses(self, service: str) -> list[str]:
        """The A records DNS answers for the service ([] for NXDOMAIN and NODATA alike)."""
        host, port = self.dns
        query = dns.message.make_query(f"{service}.service.{DOMAIN}", "A")
        answer = dns.query.udp(query, host, port=port, timeout=2)
        assert answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), answer
        return sorted(str(r) for rrset in answer.answer for r in rrset
                      if rrset.rdtype == dns.rdatatype.A)


def start_registry() -> Registry:
    """A registry API with DNS on ephemeral loopback ports."""
    return Registry(start_pilotfish("up", "--registry", "memory://", "--api", "127.0.0.1:0",
                                    "--dns", "127.0.0.1:0", "--domain", DOMAIN,
                                    expect=("registry API", "dns"), timeout=STARTUP))


def start_sidecar(pilotfish: StartPilotfish, registry_url: str, docker: DockerEngine,
                  sidecar_id: str, *args: str, ttl: int = 2) -> PilotfishProcess:
    """`pilotfish sidecar` on the test engine, found through DOCKER_HOST as the docker CLI
    finds it, with its HTTP listener; returns once /health says it holds a lease."""
    process = pilotfish("sidecar", "--registry", registry_url, "--advertise-ip", ADVERTISE,
                        "--ttl", str(ttl), "--sidecar-id", sidecar_id,
                        "--sidecar-http", "127.0.0.1:0", *args,
                        env={"DOCKER_HOST": docker.host}, expect=("sidecar http",),
                        timeout=STARTUP)
    wait_healthy(process)
    return process


def sidecar_http(process: PilotfishProcess) -> str:
    """Base URL of a sidecar's /metrics and /health."""
    return "http://" + process.listening["sidecar http"]


def wait_healthy(process: PilotfishProcess, timeout: float = 30.0) -> None:
    """Poll the sidecar's /health until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(sidecar_http(process) + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "sidecar never healthy:\n" + "".join(
            process.lines[-30:])
        time.sleep(0.05)


def metric(process: PilotfishProcess, series: str) -> float:
    """One series from the sidecar's /metrics (0 when absent)."""
    for line in httpx.get(sidecar_http(process) + "/metrics", timeout=5).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def serving(snapshot: Snapshot, service: str) -> list[Instance]:
    """The service's instances that consumers hand out (not critical)."""
    return [i for i in snapshot.service(service) if i.serving]


async def timed(catalog: Catalog, predicate: Callable[[Snapshot], object],
                timeout: float) -> tuple[float, Snapshot]:
    """Seconds until the catalog satisfies predicate (failing after timeout), and the snapshot."""
    started = time.monotonic()
    snapshot = await wait_until(catalog, predicate, timeout)
    return time.monotonic() - started, snapshot


async def dns_timed(registry: Registry, service: str, want: list[str],
                    timeout: float) -> float:
    """Seconds until DNS answers the service with exactly these addresses ([]: none)."""
    started = time.monotonic()
    while True:
        got = await asyncio.to_thread(registry.addresses, service)
        if got == want:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"DNS still answers {got}, not {want}"
        await asyncio.sleep(0.02)
