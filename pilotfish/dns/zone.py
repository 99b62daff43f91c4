"""The zone: pre-encoded answers for every name and hot type, rebuilt per changed service."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from pilotfish.dns.answers import NOERROR, NXDOMAIN, RCODE_NAMES, REFUSED, Answer
from pilotfish.dns.names import addr_label, encode, tag_label
from pilotfish.dns.records import (
    CLASS_IN,
    QUESTION_NAME,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_NAMES,
    TYPE_NS,
    TYPE_SOA,
    TYPE_SRV,
    address_record,
    ns_record,
    soa_record,
    srv_record,
)
from pilotfish.dns.stats import DnsStats
from pilotfish.registry.catalog import Snapshot
from pilotfish.registry.model import Instance

log = logging.getLogger(__name__)

# Types answered straight from the table; any other type at a name that exists is NODATA.
HOT_TYPES = (TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_ANY)
PROTOCOLS = ("tcp", "udp")
_QUESTION_TAIL = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    """What shapes the answers: the domain, TTLs, the A/AAAA cap, the name server's addresses."""

    domain: str = "pilotfish"
    ttl: int = 0
    negative_ttl: int = 1
    max_answers: int = 32  # A/AAAA records per answer; 0 = no cap
    ns_addresses: tuple[str, ...] = ()
    recursion: bool = False  # RA in responses: set when forwarding is on


def key(name: bytes, qtype: int) -> bytes:
    """The table key: a lower-cased wire name followed by the question's type and class IN."""
    return name + _QUESTION_TAIL.pack(qtype, CLASS_IN)


def type_name(qtype: int) -> str:
    """The label queries of this type are counted under."""
    return TYPE_NAMES.get(qtype, "other")


@dataclass(slots=True)
class _Service:
    instances: tuple[Instance, ...]
    keys: list[bytes] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Records:
    """The encoded records of one instance, shared by every name it appears under."""

    srv: bytes
    target: bytes  # the A/AAAA of the SRV target, for the additional section
    address: bytes  # the same address owned by the question name
    v6: bool


class Zone:
    """Answers for the whole domain, keyed by lower-cased question bytes.

    `table` maps a question (name, type, class) to its Answer; `names` holds every name that
    exists, so other types get NODATA and everything else under the apex gets NXDOMAIN.
    """

    def __init__(self, settings: ZoneSettings, stats: DnsStats) -> None:
        self.settings = settings
        self.stats = stats
        self.domain = settings.domain
        self.apex = encode(self.domain)
        self.apex_labels = tuple(self.domain.split("."))
        self.serial = int(time.time())  # the zone is not transferred; the serial stays put
        self.table: dict[bytes, Answer] = {}
        self.names: set[bytes] = set()
        self.index = 0
        self._services: dict[str, _Service] = {}
        self._addresses: dict[str, int] = {}
        self._empty_answers: dict[tuple[int, str], Answer] = {}
        self._soa = soa_record(self.apex, self.domain, self.serial, settings.negative_ttl,
                               settings.negative_ttl)
        self._build_static()

    # negative answers, shared by every name

    def nodata(self, qtype: int) -> Answer:
        """NOERROR with no records and the SOA in authority (RFC 2308 NODATA)."""
        return self._empty(NOERROR, qtype)

    def nxdomain(self, qtype: int) -> Answer:
        """NXDOMAIN with the SOA in authority (RFC 2308)."""
        return self._empty(NXDOMAIN, qtype)

    def refused(self, qtype: int) -> Answer:
        """REFUSED, not authoritative: the name is outside the zone."""
        return self._empty(REFUSED, qtype)

    def _empty(self, rcode: int, qtype: int) -> Answer:
        """An answer without records, built once per (rcode, type)."""
        name = type_name(qtype)
        answer = self._empty_answers.get((rcode, name))
        if answer is None:
            in_zone = rcode != REFUSED
            answer = self._empty_answers[(rcode, name)] = Answer(
                rcode, self.stats.slot(name, RCODE_NAMES[rcode]),
                authority=[self._soa] if in_zone else [], authoritative=in_zone,
                recursion=self.settings.recursion)
        return answer

    def lookup(self, labels: list[bytes], qtype: int) -> Answer | None:
        """The answer for a question read in full, or None when the name is out of zone."""
        name = b"".join(bytes((len(label),)) + label.lower() for label in labels) + b"\x00"
        answer = self.table.get(key(name, qtype))
        if answer is not None:
            return answer
        if name in self.names:
            return self.nodata(qtype)
        if self.contains(labels):
            return self.nxdomain(qtype)
        return None

    def contains(self, labels: list[bytes]) -> bool:
        """Whether a name is the apex or below it."""
        apex = self.apex_labels
        if len(labels) < len(apex):
            return False
        tail = labels[len(labels) - len(apex):]
        return tuple(label.lower() for label in tail) == tuple(a.encode() for a in apex)

    # building

    def _answer(self, qtype: int, answers: list[bytes], extras: Iterable[Iterable[bytes]] = (),
                cap: int = 0) -> Answer:
        if not answers:
            return self.nodata(qtype)
        return Answer(NOERROR, self.stats.slot(type_name(qtype), "NOERROR"), answers,
                      [tuple(e) for e in extras], cap=cap, recursion=self.settings.recursion)

    def _put(self, name: str, answers: dict[int, Answer], owner: _Service | None = None) -> None:
        wire = encode(name)
        self.names.add(wire)
        if owner is not None:
            owner.names.append(wire)
        for qtype, answer in answers.items():
            k = key(wire, qtype)
            self.table[k] = answer
            if owner is not None:
                owner.keys.append(k)

    def _build_static(self) -> None:
        s, d = self.settings, self.domain
        ns_name = encode(f"ns.{d}")
        glue = [address_record(ns_name, a, s.ttl) for a in s.ns_addresses]
        own = [address_record(QUESTION_NAME, a, s.ttl) for a in s.ns_addresses]
        soa = soa_record(QUESTION_NAME, d, self.serial, s.negative_ttl, s.ttl)
        self._put(d, {
            TYPE_SOA: self._answer(TYPE_SOA, [soa]),
            TYPE_NS: self._answer(TYPE_NS, [ns_record(QUESTION_NAME, d, s.ttl)], [glue]),
            TYPE_ANY: self._answer(TYPE_ANY, [soa]),  # RFC 8482: one RRset is enough
            TYPE_A: self.nodata(TYPE_A), TYPE_AAAA: self.nodata(TYPE_AAAA),
            TYPE_SRV: self.nodata(TYPE_SRV),
        })
        v6 = [":" in a for a in s.ns_addresses]
        self._put(f"ns.{d}", self._host_answers(
            [rr for rr, six in zip(own, v6, strict=True) if not six],
            [rr for rr, six in zip(own, v6, strict=True) if six], [], []))
        self._put(f"service.{d}", {})
        self._put(f"addr.{d}", {})

    def _host_answers(self, v4: list[bytes], v6: list[bytes], srv: list[bytes],
                      targets: list[bytes]) -> dict[int, Answer]:
        """A, AAAA, SRV and ANY at a name that stands for a set of instances."""
        cap = self.settings.max_answers
        return {
            TYPE_A: self._answer(TYPE_A, v4, cap=cap),
            TYPE_AAAA: self._answer(TYPE_AAAA, v6, cap=cap),
            TYPE_SRV: self._answer(TYPE_SRV, srv, [(t,) for t in targets]),
            TYPE_ANY: self._answer(TYPE_ANY, v4 or v6, cap=cap),
        }

    def _srv_answers(self, srv: list[bytes], targets: list[bytes]) -> dict[int, Answer]:
        """An RFC 2782 name: SRV only (ANY gets the SRV set too)."""
        extras = [(t,) for t in targets]
        return {
            TYPE_SRV: self._answer(TYPE_SRV, srv, extras),
            TYPE_ANY: self._answer(TYPE_ANY, srv, extras),
            TYPE_A: self.nodata(TYPE_A), TYPE_AAAA: self.nodata(TYPE_AAAA),
        }

    def _records(self, instance: Instance) -> _Records:
        ttl = self.settings.ttl
        target = f"{addr_label(instance.address)}.addr.{self.domain}"
        priority = instance.meta.get("priority", "1")
        srv = srv_record(QUESTION_NAME, int(priority) if priority.isdigit()
                         and int(priority) <= 65535 else 1,
                         instance.weight, instance.port, target, ttl)
        return _Records(srv, address_record(encode(target), instance.address, ttl),
                        address_record(QUESTION_NAME, instance.address, ttl),
                        ":" in instance.address)

    def _add_service(self, name: str, service: _Service) -> None:
        serving = [i for i in service.instances if i.serving]
        if not serving:
            return
        records = {i.id: self._records(i) for i in serving}
        base = f"{name}.service.{self.domain}"

        def encoded(group: list[Instance]) -> tuple[list[bytes], ...]:
            rows = [records[i.id] for i in group]
            return (list(dict.fromkeys(r.address for r in rows if not r.v6)),
                    list(dict.fromkeys(r.address for r in rows if r.v6)),
                    [r.srv for r in rows], [r.target for r in rows])

        everyone = encoded(serving)
        self._put(base, self._host_answers(*everyone), service)
        self._put(f"_{name}.service.{self.domain}", {}, service)  # empty non-terminal
        for protocol in PROTOCOLS:
            self._put(f"_{name}._{protocol}.service.{self.domain}",
                      self._srv_answers(everyone[2], everyone[3]), service)
        tagged: dict[str, list[Instance]] = {}
        for instance in serving:
            for tag in instance.tags:
                label = tag_label(tag)
                group = tagged.setdefault(label, []) if label is not None else None
                if group is not None and (not group or group[-1] is not instance):
                    group.append(instance)
        for label, group in tagged.items():
            part = encoded(group)
            self._put(f"{label}.{base}", self._host_answers(*part), service)
            if label not in PROTOCOLS:
                self._put(f"_{name}._{label}.service.{self.domain}",
                          self._srv_answers(part[2], part[3]), service)
        for address in {i.address for i in serving}:
            self._address_ref(address, +1)
            service.addresses.add(address)

    def _remove_service(self, service: _Service) -> None:
        for k in service.keys:
            self.table.pop(k, None)
        for wire in service.names:
            self.names.discard(wire)
        for address in service.addresses:
            self._address_ref(address, -1)

    def _address_ref(self, address: str, delta: int) -> None:
        count = self._addresses.get(address, 0) + delta
        name = f"{addr_label(address)}.addr.{self.domain}"
        if count <= 0:
            self._addresses.pop(address, None)
            wire = encode(name)
            self.names.discard(wire)
            for qtype in HOT_TYPES:
                self.table.pop(key(wire, qtype), None)
        else:
            if address not in self._addresses:
                rr = [address_record(QUESTION_NAME, address, self.settings.ttl)]
                v6 = ":" in address
                self._put(name, self._host_answers([] if v6 else rr, rr if v6 else [], [], []))
            self._addresses[address] = count

    def update(self, snapshot: Snapshot) -> None:
        """Re-encode the services whose instances changed; a view listener."""
        started = time.perf_counter()
        groups = snapshot.by_service()
        changed = 0
        for name in [n for n in self._services if n not in groups]:
            self._remove_service(self._services.pop(name))
            changed += 1
        for name, instances in groups.items():
            current = self._services.get(name)
            if current is not None and current.instances == instances:
                continue
            if current is not None:
                self._remove_service(current)
            service = self._services[name] = _Service(instances)
            try:
                self._add_service(name, service)
            except Exception:  # one bad record must not take the others down
                log.exception("cannot encode DNS answers for service %r", name)
                self._remove_service(service)
                service.keys, service.names, service.addresses = [], [], set()
            changed += 1
        self.index = snapshot.index
        self.stats.names = len(self.table)
        if changed:
            log.debug("dns zone: %d services re-encoded at index %d in %.1f ms", changed,
                      snapshot.index, (time.perf_counter() - started) * 1000)
