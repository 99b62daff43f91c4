"""A running `pilotfish up` with DNS, and helpers to register instances and ask real clients."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish

DOMAIN = "pilotfish.test"
NEGATIVE_TTL = 3


@dataclass
class DnsStack:
    """One pilotfish process: its API (to register) and DNS port (to query)."""

    process: PilotfishProcess
    client: httpx.Client
    host: str
    port: int

    def register(self, service: str, instance_id: str, address: str, port: int, *,
                 ttl: int = 30, **fields: Any) -> dict[str, Any]:
        """PUT an instance with a lease of its own."""
        response = self.client.put(f"/v1/services/{service}/instances/{instance_id}",
                                   json={"address": address, "port": port, "ttl": ttl, **fields})
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def deregister(self, service: str, instance_id: str) -> None:
        """DELETE an instance."""
        response = self.client.delete(f"/v1/services/{service}/instances/{instance_id}")
        assert response.status_code == 204, response.text

    def query(self, name: str, rdtype: str | int = "A", *, tcp: bool = False,
              use_edns: int | bool = False, payload: int = 1232,
              timeout: float = 2.0) -> dns.message.Message:
        """Ask with dnspython (UDP unless tcp), without retrying over TCP on TC."""
        message = dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload)
        message.flags &= ~dns.flags.RD
        if tcp:
            return dns.query.tcp(message, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(message, self.host, port=self.port, timeout=timeout,
                             ignore_trailing=False)

    def dig(self, *args: str) -> str:
        """Run dig against the server and return its output."""
        result = subprocess.run(
            ["dig", "-p", str(self.port), f"@{self.host}", "+tries=1", "+time=2", *args],
            capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def wait_for(self, name: str, rdtype: str, count: int, timeout: float = 5.0,
                 tcp: bool = False) -> float:
        """Poll until `name` has `count` answers; returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            answer = self.query(name, rdtype, tcp=tcp)
            if sum(len(rrset) for rrset in answer.answer) == count:
                return time.monotonic() - started
            time.sleep(0.01)
        raise AssertionError(f"{name} {rdtype} never had {count} answers")


def start_stack(*args: str) -> tuple[PilotfishProcess, DnsStack]:
    """`pilotfish up` with API and DNS on ephemeral loopback ports."""
    process = start_pilotfish(
        "up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0", "--domain", DOMAIN,
        "--dns-negative-ttl", str(NEGATIVE_TTL), *args, expect=("registry API", "dns"))
    host, _, port = process.listening["dns"].rpartition(":")
    client = httpx.Client(base_url=process.api, timeout=10)
    return process, DnsStack(process, client, host, int(port))


@pytest.fixture(scope="module")
def stack() -> Iterator[DnsStack]:
    """A server for a whole test module (tests use service names of their own)."""
    process, running = start_stack("--dns-max-answers", "0")
    try:
        yield running
    finally:
        running.client.close()
        process.stop()
