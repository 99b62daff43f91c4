"""The zone: pre-encoded answers for every name and hot type, rebuilt per changed service.

Each instance's records are encoded once and kept while the instance is unchanged; a change
re-assembles only its service's answers from them. Every name holds a reference on itself and
on each of its ancestors, so a name with descendants exists (NODATA) and nothing else does.
"""

from __future__ import annotations

import itertools
import logging
import operator
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.dns.answers import NOERROR, NXDOMAIN, RCODE_NAMES, REFUSED, Answer
from pilotfish.dns.names import encode, packed_address, tag_label
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
from pilotfish.dns.ring import InstanceRecords, RingGroup, ring_point
from pilotfish.dns.stats import DnsStats

log = logging.getLogger(__name__)

PROTOCOLS = ("tcp", "udp")
MAX_PRIORITY = 65535
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


def srv_priority(meta: Mapping[str, str]) -> int:
    """The SRV priority an instance asks for in meta.priority; 1 when absent or unusable."""
    value = meta.get("priority", "1")
    if value.isascii() and value.isdigit() and len(value) <= 5 and int(value) <= MAX_PRIORITY:
        return int(value)
    return 1


@dataclass(slots=True)
class _Service:
    members: dict[str, Instance] = field(default_factory=dict)
    placed: dict[str, InstanceRecords] = field(default_factory=dict)  # what the groups hold now
    everyone: RingGroup = field(default_factory=RingGroup)
    tags: dict[str, RingGroup] = field(default_factory=dict)
    hosts: dict[tuple[bytes, str], int] = field(default_factory=dict)
    keys: set[bytes] = field(default_factory=set)
    names: set[bytes] = field(default_factory=set)


class Zone:
    """Answers for the whole domain, keyed by lower-cased question bytes.

    `table` maps a question (name, type, class) to its Answer; `names` counts references to
    every name that exists, so other types get NODATA and everything else under the apex
    gets NXDOMAIN.
    """

    def __init__(self, settings: ZoneSettings, stats: DnsStats) -> None:
        self.settings = settings
        self.stats = stats
        self.domain = settings.domain
        self.apex = encode(self.domain)
        self.apex_labels = tuple(self.domain.split("."))
        self.serial = int(time.time())  # the zone is not transferred; the serial stays put
        self.table: dict[bytes, Answer] = {}
        self.names: dict[bytes, int] = {}
        self.index = 0
        self._instances: Mapping[str, Instance] = {}
        self._services: dict[str, _Service] = {}
        self._hosts: dict[bytes, int] = {}
        self._address_answers: dict[str, Answer] = {}  # shared by the names of an address
        self._address_names: dict[str, int] = {}
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

    # names and their ancestors

    def _ref(self, wire: bytes, delta: int) -> None:
        """Count a reference to a name and to each name between it and the apex."""
        names, apex_length, offset = self.names, len(self.apex), 0
        while True:
            suffix = wire[offset:] if offset else wire
            count = names.get(suffix, 0) + delta
            if count > 0:
                names[suffix] = count
            else:
                names.pop(suffix, None)
            if len(suffix) <= apex_length:
                return
            offset += wire[offset] + 1

    def _answer(self, qtype: int, answers: list[bytes], extras: list[bytes] | None = None,
                points: list[int] | None = None, cap: int = 0) -> Answer:
        return Answer(NOERROR, self.stats.slot(type_name(qtype), "NOERROR"), answers,
                      extras or (), cap=cap, recursion=self.settings.recursion,
                      points=points or ())

    def _build_static(self) -> None:
        s, d = self.settings, self.domain
        ns_name = encode(f"ns.{d}")
        soa = soa_record(QUESTION_NAME, d, self.serial, s.negative_ttl, s.ttl)
        glue = [address_record(ns_name, a, s.ttl) for a in s.ns_addresses]
        apex = {
            TYPE_SOA: self._answer(TYPE_SOA, [soa]),
            TYPE_NS: self._answer(TYPE_NS, [ns_record(QUESTION_NAME, d, s.ttl)],
                                  glue[:1]),  # one listen address, so one glue record
            TYPE_ANY: self._answer(TYPE_ANY, [soa]),  # RFC 8482: one RRset is enough
        }
        own = {qtype: [address_record(QUESTION_NAME, a, s.ttl) for a in s.ns_addresses
                       if (":" in a) == (qtype == TYPE_AAAA)] for qtype in (TYPE_A, TYPE_AAAA)}
        ns = {qtype: self._answer(qtype, rrs) for qtype, rrs in own.items() if rrs}
        if ns:
            ns[TYPE_ANY] = ns.get(TYPE_A) or ns[TYPE_AAAA]
        for wire, answers in ((self.apex, apex), (ns_name, ns)):
            self._ref(wire, +1)
            for qtype, answer in answers.items():
                self.table[key(wire, qtype)] = answer

    # instances

    def _records(self, instance: Instance) -> InstanceRecords:
        ttl = self.settings.ttl
        packed = packed_address(instance.address)
        hex_name = f"{packed.hex()}.addr.{self.domain}"
        target = encode(f"{instance.port}.{hex_name}")
        labels = tuple(dict.fromkeys(
            label for label in map(tag_label, instance.tags) if label is not None))
        return InstanceRecords(
            srv_record(QUESTION_NAME, srv_priority(instance.meta), instance.weight,
                       instance.port, target, ttl),
            address_record(target, packed, ttl),
            address_record(QUESTION_NAME, packed, ttl), instance.address,
            len(packed) == 16, ring_point(instance.id), ring_point(instance.address),
            labels, ((encode(hex_name), instance.address), (target, instance.address)))

    def _place(self, service: _Service, instance_id: str, instance: Instance | None) -> None:
        """Move one instance's records into (or out of) its service's groups."""
        old = service.placed.pop(instance_id, None)
        if old is not None:
            service.everyone.remove(instance_id, old)
            for label in old.labels:
                service.tags[label].remove(instance_id, old)
            self._count_hosts(service, old.hosts, -1)
        if instance is None or not instance.serving:
            return
        try:
            records = self._records(instance)
        except Exception:  # one bad instance must not take its service down
            log.exception("dns: instance %r of %r left out of the zone", instance_id,
                          instance.service)
            return
        service.placed[instance_id] = records
        service.everyone.add(instance_id, records)
        for label in records.labels:
            group = service.tags.get(label)
            if group is None:
                group = service.tags[label] = RingGroup()
            group.add(instance_id, records)
        self._count_hosts(service, records.hosts, +1)

    def _count_hosts(self, service: _Service, hosts: tuple[tuple[bytes, str], ...],
                     delta: int) -> None:
        counts = service.hosts
        for host in hosts:
            count = counts.get(host, 0) + delta
            if count > 0:
                counts[host] = count
                if count == delta:  # first use by this service
                    self._host_ref(*host, +1)
            else:
                counts.pop(host, None)
                self._host_ref(*host, -1)

    def _group_answers(self, group: RingGroup) -> dict[int, Answer]:
        """A, AAAA, SRV and ANY at a name that stands for a group; joined again after a change."""
        if group.cached is not None:
            return group.cached
        cap = self.settings.max_answers
        answers: dict[int, Answer] = {}
        for qtype, v6 in ((TYPE_A, False), (TYPE_AAAA, True)):
            if group.address_records[v6]:
                answers[qtype] = self._answer(qtype, group.address_records[v6],
                                              points=group.address_points[v6], cap=cap)
        if answers:
            answers[TYPE_ANY] = answers.get(TYPE_A) or answers[TYPE_AAAA]
        answers[TYPE_SRV] = self._answer(TYPE_SRV, group.srv, group.extras, group.points)
        group.cached = answers
        return answers

    def _rebuild(self, name: str, service: _Service) -> None:
        """Swap in the answers of a service's changed groups, and its names."""
        table: dict[bytes, Answer] = {}
        if service.everyone:
            d = self.domain
            base = f"{name}.service.{d}"
            everyone = self._group_answers(service.everyone)
            srv = {TYPE_SRV: everyone[TYPE_SRV], TYPE_ANY: everyone[TYPE_SRV]}
            owned: dict[str, dict[int, Answer]] = {base: everyone}
            for protocol in PROTOCOLS:
                owned[f"_{name}._{protocol}.service.{d}"] = srv
            for label, group in list(service.tags.items()):
                if not group:
                    del service.tags[label]
                    continue
                answers = owned[f"{label}.{base}"] = self._group_answers(group)
                if label not in PROTOCOLS:
                    owned[f"_{name}._{label}.service.{d}"] = {
                        TYPE_SRV: answers[TYPE_SRV], TYPE_ANY: answers[TYPE_SRV]}
            for owner, answers in owned.items():
                wire = encode(owner)
                for qtype, answer in answers.items():
                    table[key(wire, qtype)] = answer
            new_names = {k[:-4] for k in table}
        else:
            service.tags.clear()
            new_names = set()
        for gone in service.keys.difference(table):
            self.table.pop(gone, None)
        self.table.update(table)
        service.keys = set(table)
        for wire in new_names - service.names:
            self._ref(wire, +1)
        for wire in service.names - new_names:
            self._ref(wire, -1)
        service.names = new_names

    def _host_ref(self, wire: bytes, address: str, delta: int) -> None:
        """Count the services naming an address; its name lives while any does."""
        count = self._hosts.get(wire, 0) + delta
        if count <= 0:
            self._hosts.pop(wire, None)
            self._ref(wire, -1)
            for qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
                self.table.pop(key(wire, qtype), None)
            users = self._address_names.pop(address) - 1
            if users:
                self._address_names[address] = users
            else:
                del self._address_answers[address]
            return
        if wire not in self._hosts:
            qtype = TYPE_AAAA if ":" in address else TYPE_A
            answer = self._address_answers.get(address)
            if answer is None:
                answer = self._address_answers[address] = self._answer(
                    qtype, [address_record(QUESTION_NAME, address, self.settings.ttl)])
            self._address_names[address] = self._address_names.get(address, 0) + 1
            self.table[key(wire, qtype)] = self.table[key(wire, TYPE_ANY)] = answer
            self._ref(wire, +1)
        self._hosts[wire] = count

    def update(self, snapshot: Snapshot) -> None:
        """Re-assemble the services whose instances changed; a view subscriber."""
        started = time.perf_counter()
        new, old = snapshot.instances, self._instances
        changed: dict[str, list[tuple[str, Instance | None]]] = {}
        if new is not old:
            # the identity comparison runs in C: a snapshot shares every unchanged Instance
            ids = list(new)
            before = list(map(old.get, ids))
            added = 0
            for at in itertools.compress(range(len(ids)),
                                         map(operator.is_not, new.values(), before)):
                instance_id, instance, previous = ids[at], new[ids[at]], before[at]
                if previous is None:
                    added += 1
                elif previous == instance:
                    continue
                elif previous.service != instance.service:
                    changed.setdefault(previous.service, []).append((instance_id, None))
                changed.setdefault(instance.service, []).append((instance_id, instance))
            if len(old) + added != len(new):  # some are gone
                for instance_id in old.keys() - new.keys():
                    changed.setdefault(old[instance_id].service, []).append((instance_id, None))
            self._instances = new
            services = self._services
            for name in sorted(changed):
                service = services.get(name)
                if service is None:
                    service = services[name] = _Service()
                for instance_id, now in changed[name]:
                    if now is None:
                        service.members.pop(instance_id, None)
                    else:
                        service.members[instance_id] = now
                    self._place(service, instance_id, now)
                self._rebuild(name, service)
                if not service.members:
                    del services[name]
        self.index = snapshot.index
        self.stats.names = len(self.table)
        if changed:
            log.debug("dns zone: %d services re-assembled at index %d in %.1f ms", len(changed),
                      snapshot.index, (time.perf_counter() - started) * 1000)
