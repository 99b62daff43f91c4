"""Cluster members frozen (SIGSTOP) under readers and registrars: what DNS and the API serve.

A frozen member is the common production fault (a stalled disk, a GC pause, an
overloaded VM): its sockets stay open, it simply stops answering. `ride_out_freezes`
runs issue 16's scenario on a three-member cluster handed over as a `FrozenCluster`:

- readers are real `pilotfish up` processes (API + DNS): one whose URL names only member
  a, one naming only member b, and one with the full URL; each is sampled every 100 ms
  (GET /v1/services/<svc>, a SRV query, the DNS /health);
- registrars (TTL 3 s) hold six instances on catalogs whose URLs start at a, at b;
- member a is frozen for 5 s, b for 15 s, then the leader for 5 s; during each freeze
  a third registrar adds an instance, which every reader must show soon after the thaw.

`Phase` keeps what was measured; the test files assert on it and print the figures that
docs/faults.md quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import httpx

from pilotfish.catalog import BackendUnavailable, Catalog, open_catalog
from pilotfish.registrar.registrar import Registrar
from tests.backends.scenarios import add_until_done
from tests.fixtures.process import PilotfishProcess, StartPilotfish
from tests.fixtures.watching import instance

DOMAIN = "faults.test"
SAMPLE_EVERY = 0.1
TTL = 3
BASE_PORT = 30000
LATE_PORT = 30100
SETTLE = 3.0  # after a thaw, how long the phase's window keeps looking


@dataclass(frozen=True)
class FrozenCluster:
    """What the scenario needs from a backend's cluster fixture."""

    url: Callable[[Sequence[int]], str]  # a registry URL naming these members, in order
    leader: Callable[[], int]
    freeze: Callable[[int, bool], None]  # SIGSTOP (True) or SIGCONT (False) one member


@dataclass(frozen=True)
class Sample:
    """One look at a reader: what its API and DNS served, and whether it said stale."""

    at: float
    api: frozenset[int] | None  # ports from a 200 answer; None: no 200 (503, timeout)
    dns: frozenset[int] | None  # SRV ports (empty for NXDOMAIN); None: no answer
    nxdomain: bool
    stale: bool | None  # the DNS /health said stale (503); None: no answer


@dataclass
class Reader:
    """A `pilotfish up` process following one registry URL, and what it was seen serving."""

    name: str
    process: PilotfishProcess
    samples: list[Sample] = field(default_factory=list)

    @property
    def dns_address(self) -> tuple[str, int]:
        """Where its DNS server listens."""
        host, _, port = self.process.listening["dns"].rpartition(":")
        return host, int(port)

    async def look(self, http: httpx.AsyncClient, service: str) -> Sample:
        """Ask the API, the DNS server and the DNS health once, at the same time."""
        at = time.monotonic()
        api, answer, health = await asyncio.gather(
            self._api(http, service), self._dns(service), self._stale(http))
        nxdomain = answer == "nxdomain"
        ports = frozenset() if nxdomain else answer
        assert not isinstance(ports, str)
        return Sample(at, api, ports, nxdomain, health)

    async def _api(self, http: httpx.AsyncClient, service: str) -> frozenset[int] | None:
        try:
            answer = await http.get(f"{self.process.api}/v1/services/{service}", timeout=1.0)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        return frozenset(i["port"] for i in answer.json()["instances"])

    async def _dns(self, service: str) -> frozenset[int] | str | None:
        host, port = self.dns_address
        query = dns.message.make_query(f"{service}.service.{DOMAIN}", "SRV")
        try:
            answer = await dns.asyncquery.udp(query, host, port=port, timeout=1.0)
        except (TimeoutError, dns.exception.DNSException, OSError):
            return None
        if answer.rcode() == dns.rcode.NXDOMAIN:
            return "nxdomain"
        return frozenset(rdata.port for rrset in answer.answer
                         if rrset.rdtype == dns.rdatatype.SRV for rdata in rrset)

    async def _stale(self, http: httpx.AsyncClient) -> bool | None:
        try:
            health = await http.get(
                f"http://{self.process.listening['dns metrics']}/health", timeout=1.0)
        except httpx.HTTPError:
            return None
        return health.status_code == 503 and health.json().get("status") == "stale"

    def window(self, start: float, end: float) -> list[Sample]:
        """The samples taken between start and end."""
        return [s for s in self.samples if start <= s.at <= end]

    def longest_miss(self, channel: str, expected: set[int], start: float, end: float) -> float:
        """The longest time an expected instance was absent from answers this reader gave
        (from the first answer without it to the next with it), between start and end."""
        longest = 0.0
        for port in expected:
            missing_since: float | None = None
            for sample in self.window(start, end):
                served = getattr(sample, channel)
                if served is None:
                    continue  # no answer is not a wrong answer (counted apart)
                if port not in served:
                    missing_since = sample.at if missing_since is None else missing_since
                elif missing_since is not None:
                    longest = max(longest, sample.at - missing_since)
                    missing_since = None
            if missing_since is not None:
                longest = max(longest, end - missing_since)
        return longest

    def longest_unanswered(self, channel: str, start: float, end: float) -> float:
        """The longest stretch without an answer (API: no 200; DNS: timeout)."""
        longest, since = 0.0, None
        for sample in self.window(start, end):
            if getattr(sample, channel) is None:
                since = sample.at if since is None else since
            elif since is not None:
                longest, since = max(longest, sample.at - since), None
        return longest if since is None else max(longest, end - since)

    def said_stale(self, start: float, end: float) -> bool:
        """Whether the DNS /health reported the view stale at some point in the window."""
        return any(s.stale for s in self.window(start, end))

    def nxdomains(self, start: float, end: float) -> int:
        """NXDOMAIN answers for the service in the window."""
        return sum(s.nxdomain for s in self.window(start, end))

    def current_at(self, expected: set[int], after: float) -> float | None:
        """The first time after `after` from which both API and DNS served every expected
        instance in every later sample; None if that never happened."""
        since: float | None = None
        for sample in self.samples:
            if sample.at < after:
                continue
            ok = all(x is not None and expected <= x for x in (sample.api, sample.dns))
            since = (sample.at if since is None else since) if ok else None
        return since


@dataclass
class Phase:
    """One member frozen for a while, and when the cluster took writes again."""

    name: str
    member: int
    frozen_at: float
    thawed_at: float = 0.0
    late_port: int = 0
    late_registered_at: float = 0.0
    writes_back_at: float | None = None  # first accepted write after writes had failed
    caught_up: dict[str, float] = field(default_factory=dict)  # reader -> seconds after thaw

    @property
    def end(self) -> float:
        """The end of the window the checks look at."""
        return self.thawed_at + SETTLE


@dataclass
class Run:
    """Everything `ride_out_freezes` saw, for the test to assert on and print."""

    readers: dict[str, Reader]
    phases: list[Phase]
    base: set[int]
    registrars: list[Registrar]
    leases_before: list[str | None]
    leases_after_followers: list[str | None]  # after a and b were frozen (not the leader)
    reregistered_after_followers: int
    write_probes: list[tuple[float, bool]]

    def table(self) -> str:
        """One line per phase and reader: the figures docs/faults.md quotes."""
        lines = []
        for phase in self.phases:
            for name, reader in self.readers.items():
                start, end = phase.frozen_at, phase.end
                lines.append(
                    f"{phase.name:<14} {name:<7} miss api "
                    f"{reader.longest_miss('api', self.base, start, end):4.1f}s dns "
                    f"{reader.longest_miss('dns', self.base, start, end):4.1f}s | no answer "
                    f"api {reader.longest_unanswered('api', start, end):4.1f}s dns "
                    f"{reader.longest_unanswered('dns', start, end):4.1f}s | stale "
                    f"{reader.said_stale(start, end)!s:<5} | nxdomain "
                    f"{reader.nxdomains(start, end)} | current "
                    f"{phase.caught_up.get(name, float('nan')):.1f}s after thaw"
                    + (f" | writes back {phase.writes_back_at - phase.frozen_at:.1f}s"
                       if phase.writes_back_at is not None else ""))
        lines.append(f"re-registrations after the followers' freezes: "
                     f"{self.reregistered_after_followers}; at the end: " + ", ".join(
            f"{r.owner} {r.reregistrations}" for r in self.registrars))
        return "\n".join(lines)


async def _sample_forever(reader: Reader, http: httpx.AsyncClient, service: str) -> None:
    while True:
        started = time.monotonic()
        reader.samples.append(await reader.look(http, service))
        await asyncio.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))


async def _probe_writes(catalog: Catalog, lease: str, log: list[tuple[float, bool]]) -> None:
    """Keep one lease alive every 100 ms, noting when the cluster accepts writes."""
    while True:
        at = time.monotonic()
        try:
            await asyncio.wait_for(catalog.keepalive(lease), 1.0)
            log.append((at, True))
        except (BackendUnavailable, TimeoutError):
            log.append((at, False))
        await asyncio.sleep(max(0.0, SAMPLE_EVERY - (time.monotonic() - at)))


def _writes_back(log: list[tuple[float, bool]], start: float) -> float | None:
    failed = False
    for at, ok in log:
        if at < start:
            continue
        if not ok:
            failed = True
        elif failed:
            return at
    return None if failed else start


async def ride_out_freezes(cluster: FrozenCluster, pilotfish: StartPilotfish, unique: str,
                           durations: Sequence[float] = (5.0, 15.0, 5.0)) -> Run:
    """Freeze member a, then b, then the leader (for `durations`) under the readers and
    registrars described in the module docstring; return what was seen."""
    service = f"fz-{unique}"
    leader = cluster.leader()
    a, b = [n for n in range(3) if n != leader]
    readers = {
        name: Reader(name, pilotfish(
            "up", "--registry", url, "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0",
            "--dns-metrics", "127.0.0.1:0", "--domain", DOMAIN, "--dns-max-answers", "0",
            expect=("registry API", "dns", "dns metrics"), timeout=60))
        for name, url in (("only-a", cluster.url([a])), ("only-b", cluster.url([b])),
                          ("full", cluster.url([a, b, leader])))
    }
    catalogs = [await open_catalog(cluster.url(order))
                for order in ([a, leader, b], [b, a, leader], [leader, b, a], [b, leader, a])]
    base = {BASE_PORT + n for n in range(6)}
    registrars = [
        Registrar(catalogs[n], ttl=TTL, owner=f"reg-{n}", instances=[
            instance(service, f"i{port}-{unique}", port) for port in sorted(base)[3 * n:3 * n + 3]])
        for n in range(2)
    ] + [Registrar(catalogs[2], ttl=TTL, owner="reg-late")]
    tasks: list[asyncio.Task[None]] = []
    write_probes: list[tuple[float, bool]] = []
    phases: list[Phase] = []
    async with httpx.AsyncClient() as http:
        try:
            for registrar in registrars:
                await registrar.start()
            probe_lease = (await catalogs[3].create_lease(10, "write-probe")).id
            for reader in readers.values():
                await _wait_current(reader, http, service, base, 15)
            tasks = [asyncio.create_task(_sample_forever(r, http, service))
                     for r in readers.values()]
            tasks.append(asyncio.create_task(_probe_writes(catalogs[3], probe_lease,
                                                           write_probes)))
            leases_before = [r.lease_id for r in registrars[:2]]
            await asyncio.sleep(1.0)
            for n, (name, member, duration) in enumerate(
                    (("a", a, durations[0]), ("b", b, durations[1]),
                     ("leader", None, durations[2]))):
                if member is None:
                    member = cluster.leader()
                phase = Phase(f"{name} {duration:g}s", member, time.monotonic())
                phases.append(phase)
                cluster.freeze(member, True)
                try:
                    await asyncio.sleep(1.5)
                    phase.late_port = LATE_PORT + n
                    late = instance(service, f"late{n}-{unique}", phase.late_port)
                    await add_until_done(registrars[2], late, time.monotonic() + duration + 10,
                                         0.2)
                    phase.late_registered_at = time.monotonic()
                    await asyncio.sleep(max(0.0, phase.frozen_at + duration - time.monotonic()))
                finally:
                    cluster.freeze(member, False)
                phase.thawed_at = time.monotonic()
                expected = base | {p.late_port for p in phases}
                deadline = phase.thawed_at + 10
                while time.monotonic() < max(deadline, phase.end):
                    done = {name: reader.current_at(expected, phase.thawed_at)
                            for name, reader in readers.items()}
                    if all(t is not None for t in done.values()) and time.monotonic() > phase.end:
                        break
                    await asyncio.sleep(0.2)
                phase.caught_up = {name: t - phase.thawed_at for name, t in done.items()
                                   if t is not None}
                phase.writes_back_at = _writes_back(write_probes, phase.frozen_at)
                if n == 1:
                    leases_after = [r.lease_id for r in registrars[:2]]
                    reregistered = sum(r.reregistrations for r in registrars)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for registrar in registrars:
                await registrar.stop(revoke=False)
            for catalog in catalogs:
                await catalog.close()
    return Run(readers, phases, base, registrars, leases_before, leases_after,
               reregistered, write_probes)


async def _wait_current(reader: Reader, http: httpx.AsyncClient, service: str,
                        expected: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sample = await reader.look(http, service)
        if sample.api == expected and sample.dns == expected:
            return
        assert time.monotonic() < deadline, (
            f"{reader.name} never served {sorted(expected)}: {sample}\n"
            + "".join(reader.process.lines[-20:]))
        await asyncio.sleep(0.1)
