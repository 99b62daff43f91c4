"""What each test host serves, seen from outside: DNS answers, LB pools, health, catalog.

Every probe asks a host over the bridge with a short timeout and returns None when the host
does not answer, so a scenario can tell "answered without the instance" from "not answering".
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from tests.cluster.hosts import DNS_PORT, DOMAIN, ClusterHost

Endpoint = tuple[str, int]
T = TypeVar("T")


def dns_endpoints(host: ClusterHost, service: str = "web",
                  timeout: float = 0.5) -> list[Endpoint] | None:
    """(address, port) of every SRV answer for the service on the host's DNS, duplicates kept;
    None when the DNS does not answer."""
    query = dns.message.make_query(f"_{service}._tcp.service.{DOMAIN}", "SRV")
    try:
        answer = dns.query.udp(query, host.address, port=DNS_PORT, timeout=timeout)
        if answer.flags & dns.flags.TC:
            answer = dns.query.tcp(query, host.address, port=DNS_PORT, timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return None
    addresses: dict[str, str] = {}
    for rrset in answer.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses[rrset.name.to_text()] = rrset[0].address
    found: list[Endpoint] = []
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.SRV:
            for srv in rrset:
                target = srv.target.to_text()
                found.append((addresses.get(target, target), srv.port))
    return found


@dataclass
class Reply:
    """Status and body of one HTTP GET."""

    status_code: int
    text: str

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.text)


def _get(url: str, timeout: float = 1.0) -> Reply | None:
    """One GET with the stdlib client: cheap enough to poll from several threads at once."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path)
        response = connection.getresponse()
        return Reply(response.status, response.read().decode(errors="replace"))
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def lb_pool(host: ClusterHost, route_port: int | None = None) -> set[Endpoint] | None:
    """The instances the host's LB balances over (not draining), from its /metrics."""
    response = _get(host.lb_api + "/metrics")
    if response is None or response.status_code != 200:
        return None
    pool: set[Endpoint] = set()
    for line in response.text.splitlines():
        if not line.startswith("pilotfish_lb_instance_draining{"):
            continue
        labels, value = line[len("pilotfish_lb_instance_draining{"):].rsplit("} ", 1)
        fields = dict(item.split("=", 1) for item in labels.split(","))
        if route_port is not None and not fields["route"].strip('"').endswith(f":{route_port}"):
            continue
        if float(value) == 0.0:
            address, _, port = fields["instance"].strip('"').rpartition(":")
            pool.add((address.strip("[]"), int(port)))
    return pool


def health(url: str) -> str | None:
    """The `status` a /health endpoint reports ("ok", "stale", ...), None if it does not answer."""
    response = _get(url + "/health")
    if response is None:
        return None
    try:
        status = response.json().get("status")
    except ValueError:
        return None
    return str(status) if status is not None else None


def sidecar_state(host: ClusterHost) -> dict[str, Any] | None:
    """The host's sidecar /health body (in_sync, instances, lease, ...), None if no answer."""
    response = _get(host.sidecar_http + "/health")
    if response is None:
        return None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        return None
    return body


def lease_expiry(host: ClusterHost, lease: str) -> float | None:
    """A lease's expires_at (Unix time) as the host's registry API reads it, None if gone."""
    response = _get(f"{host.api}/v1/leases/{lease}")
    if response is None or response.status_code != 200:
        return None
    return float(response.json()["expires_at"])


def lease_status(host: ClusterHost, lease: str) -> int | None:
    """The HTTP status the host's registry API gives for a lease (404: the backend has no such
    lease any more), None if the API does not answer."""
    response = _get(f"{host.api}/v1/leases/{lease}")
    return None if response is None else response.status_code


def catalog_instances(host: ClusterHost, service: str = "web") -> list[dict[str, object]] | None:
    """The service's instances as the host's registry API reads them from the backend."""
    response = _get(f"{host.api}/v1/services/{service}")
    if response is None or response.status_code != 200:
        return None
    instances: list[dict[str, object]] = response.json()["instances"]
    return instances


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], timeout: float,
             what: str, interval: float = 0.02) -> tuple[float, T]:
    """Poll `probe` until `done(value)`; (seconds taken, value). AssertionError with the last
    value when `timeout` passes first."""
    start = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - start
        if done(value):
            return elapsed, value
        if elapsed > timeout:
            raise AssertionError(f"{what}: not within {timeout:.1f}s; last seen {value!r}")
        time.sleep(interval)


Condition = tuple[Callable[[], Any], Callable[[Any], bool]]
"""A probe and the predicate its value must meet."""


def wait_all(conditions: dict[str, Condition], timeout: float,
             start: float | None = None) -> dict[str, float]:
    """Poll every (probe, done) pair in a thread of its own, from one start; the seconds from
    `start` (time.monotonic(), default now) until each first held. AssertionError naming the
    ones that did not hold within `timeout`."""
    origin = time.monotonic() if start is None else start
    taken: dict[str, float] = {}
    failures: list[str] = []

    def watch(name: str, probe: Callable[[], Any], done: Callable[[Any], bool]) -> None:
        try:
            wait_for(probe, done, timeout - (time.monotonic() - origin), name)
            taken[name] = time.monotonic() - origin
        except AssertionError as exc:
            failures.append(str(exc))

    threads = [threading.Thread(target=watch, args=(name, *pair))
               for name, pair in conditions.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise AssertionError("; ".join(failures))
    return taken


@dataclass
class Sampler:
    """Samples every host's DNS every `interval` seconds in a thread, until stopped.

    `missing` collects (host, time, endpoints absent from an answer) for every answer that
    lacks one of `expected()`; `unanswered` counts samples a host's DNS did not answer within
    `timeout` (on a loaded machine a live server misses one now and then: not a removal).
    """

    hosts: list[ClusterHost]
    expected: Callable[[ClusterHost], set[Endpoint]]
    interval: float = 0.1
    timeout: float = 0.5
    samples: int = 0
    missing: list[tuple[str, float, set[Endpoint]]] = field(default_factory=list)
    duplicates: list[tuple[str, float, list[Endpoint]]] = field(default_factory=list)
    unanswered: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _start: float = 0.0

    def __enter__(self) -> Sampler:
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            tick = time.monotonic()
            for host in self.hosts:
                expected = self.expected(host)
                answer = dns_endpoints(host, timeout=self.timeout)
                now = time.monotonic() - self._start
                if answer is None:
                    self.unanswered[host.name] = self.unanswered.get(host.name, 0) + 1
                    continue
                if expected - set(answer):
                    self.missing.append((host.name, now, expected - set(answer)))
                if len(answer) != len(set(answer)):
                    self.duplicates.append((host.name, now, answer))
            self.samples += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))
