"""Wire-level rules checked on the responder: names that exist, opcodes, EDNS and sizes."""

from __future__ import annotations

import ipaddress
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.dns.responder import MAX_UDP_QUERY, Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings

D = "sd.example"


def responder_for(instances: list[Instance], **settings: object) -> tuple[Zone, Responder]:
    stats = DnsStats()
    zone = Zone(ZoneSettings(domain=D, **settings), stats)  # type: ignore[arg-type]
    zone.update(Snapshot(1, instances))
    return zone, Responder(zone, stats)


def ask(responder: Responder, wire: bytes, tcp: bool = False,
        client: tuple[str, int] | None = None) -> dns.message.Message:
    raw = responder.answer(wire, tcp=tcp, client=client)
    assert isinstance(raw, bytes)
    return dns.message.from_wire(raw)


def registered_names(instances: list[Instance]) -> set[str]:
    """Every name with records, as docs/dns.md documents them, from the instances alone."""
    names = {D, f"ns.{D}"}
    for i in instances:
        if i.health == "critical":
            continue
        hexed = ipaddress.ip_address(i.address).packed.hex()
        names |= {f"{i.service}.service.{D}", f"_{i.service}._tcp.service.{D}",
                  f"_{i.service}._udp.service.{D}", f"{hexed}.addr.{D}",
                  f"{i.port}.{hexed}.addr.{D}"}
        for tag in i.tags:
            label = tag.lower()
            names.add(f"{label}.{i.service}.service.{D}")
            if label not in ("tcp", "udp"):
                names.add(f"_{i.service}._{label}.service.{D}")
    return names


def existing(names: set[str]) -> set[str]:
    """The registered names and every name between them and the apex (empty non-terminals)."""
    out = set()
    for name in names:
        labels = name.split(".")
        for cut in range(len(labels) - len(D.split(".")) + 1):
            out.add(".".join(labels[cut:]))
    return out


SERVICES = st.sampled_from(["web", "db", "a-b", "x1"])
TAGS = st.lists(st.sampled_from(["blue", "tcp", "eu", "_x", "v-2", "udp"]), max_size=3)
INSTANCES = st.lists(st.builds(
    lambda service, n, port, tags, critical: Instance(
        service=service, id=f"{service}-{n}", address=f"10.0.{n}.{n % 7 + 1}" if n % 3
        else f"fd00::{n:x}", port=port, lease="l", tags=tuple(tags),
        health="critical" if critical else "passing"),
    SERVICES, st.integers(0, 12), st.sampled_from([80, 443, 8080]), TAGS,
    st.integers(0, 3).map(lambda x: x == 0)),
    max_size=12, unique_by=lambda i: i.id)
LABELS = st.sampled_from(["web", "_web", "_tcp", "_udp", "service", "addr", "blue", "_blue",
                          "_x", "__x", "eu", "_eu", "80", "443", "0a000101", "ns", "x", "_db",
                          "db", "tcp"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(INSTANCES, st.lists(st.lists(LABELS, min_size=1, max_size=4), max_size=20),
       st.sampled_from(["A", "AAAA", "SRV", "TXT"]))
def test_a_name_exists_exactly_when_it_or_a_descendant_is_registered(
        instances: list[Instance], probes: list[list[str]], rdtype: str) -> None:
    _, responder = responder_for(instances)
    names = registered_names(instances)
    exists = existing(names)
    candidates = set(exists) | {".".join([*labels, D]) for labels in probes}
    candidates |= {f"nope.{name}" for name in list(exists)[:10]}
    for name in sorted(candidates):
        for tcp in (False, True):
            wire = dns.message.make_query(name, rdtype, use_edns=0).to_wire()
            response = ask(responder, wire, tcp=tcp)
            expected = dns.rcode.NOERROR if name in exists else dns.rcode.NXDOMAIN
            assert response.rcode() == expected, (name, rdtype, sorted(names))
            if not response.answer:
                assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]
            else:
                assert name in names


def test_empty_non_terminals_of_every_tree() -> None:
    _, responder = responder_for([Instance(service="web", id="w1", address="10.0.0.1", port=80,
                                           lease="l", tags=("blue",))])
    cases = {f"_tcp.service.{D}": dns.rcode.NOERROR, f"_udp.service.{D}": dns.rcode.NOERROR,
             f"_blue.service.{D}": dns.rcode.NOERROR, f"service.{D}": dns.rcode.NOERROR,
             f"addr.{D}": dns.rcode.NOERROR, f"0a000001.addr.{D}": dns.rcode.NOERROR,
             f"_web.service.{D}": dns.rcode.NXDOMAIN, f"_red.service.{D}": dns.rcode.NXDOMAIN,
             f"_web._red.service.{D}": dns.rcode.NXDOMAIN,
             f"81.0a000001.addr.{D}": dns.rcode.NXDOMAIN}
    for name, rcode in cases.items():
        assert ask(responder, dns.message.make_query(name, "A").to_wire()).rcode() == rcode, name
    _, empty = responder_for([])
    for name in (f"service.{D}", f"addr.{D}", f"_tcp.service.{D}"):
        assert ask(empty, dns.message.make_query(name, "A").to_wire()).rcode() == 3, name


def test_every_reply_echoes_the_opcode() -> None:
    _, responder = responder_for([])
    for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE,
                   6, 15):
        query = dns.message.make_query(D, "SOA")
        query.set_opcode(opcode)
        raw = responder.answer(query.to_wire())
        assert isinstance(raw, bytes)
        assert (raw[2] >> 3) & 0x0F == opcode and raw[3] & 0x0F == dns.rcode.NOTIMP
        assert raw[2] & 0x80 and raw[:2] == query.to_wire()[:2]
        assert raw[4:6] == b"\x00\x01"  # the question (UPDATE: zone) section is echoed


def test_edns_opt_owner_and_option_overrun_are_formerr() -> None:
    _, responder = responder_for([Instance(service="web", id="w1", address="10.0.0.1", port=80,
                                           lease="l")])
    good = dns.message.make_query(f"web.service.{D}", "A", use_edns=0,
                                  options=[dns.edns.GenericOption(10, b"12345678")]).to_wire()
    assert ask(responder, good).rcode() == dns.rcode.NOERROR  # a cookie is fine
    plain = dns.message.make_query(f"web.service.{D}", "A").to_wire()
    opt_rr = good[len(plain):]
    assert opt_rr[:3] == b"\x00\x00\x29"
    owner = b"\x03web\x00"
    non_root = plain[:10] + b"\x00\x01" + plain[12:] + owner + opt_rr[1:]
    # an option that claims more than the record holds, and one cut inside its header
    overrun = good[:-12] + struct.pack("!HH", 10, 40) + good[-8:]
    cut_header = good[:-14] + b"\x00\x02" + good[-10:-8]
    for bad in (non_root, overrun, cut_header):
        for tcp in (False, True):
            raw = responder.answer(bad, tcp=tcp)
            assert isinstance(raw, bytes) and raw[3] & 0x0F == dns.rcode.FORMERR, bad.hex()


def test_udp_queries_over_4096_octets_are_formerr() -> None:
    _, responder = responder_for([])
    padding = dns.edns.GenericOption(12, b"\x00" * (MAX_UDP_QUERY - 40))  # RFC 7830 padding
    big = dns.message.make_query(D, "SOA", use_edns=0, options=[padding]).to_wire(
        max_size=65535)
    assert len(big) > MAX_UDP_QUERY
    raw = responder.answer(big)
    assert isinstance(raw, bytes) and raw[3] & 0x0F == dns.rcode.FORMERR
    assert ask(responder, big, tcp=True).rcode() == dns.rcode.NOERROR  # TCP takes it
    small = dns.message.make_query(D, "SOA", use_edns=0, options=[
        dns.edns.GenericOption(12, b"\x00" * 100)]).to_wire()
    assert ask(responder, small).rcode() == dns.rcode.NOERROR


def stored_before_validation(instance: Instance, **meta: str) -> Instance:
    """An instance carrying meta that today's API refuses (data written by an older version)."""
    object.__setattr__(instance, "meta", {**instance.meta, **meta})
    return instance


def test_one_bad_instance_leaves_its_service_answered() -> None:
    good = [Instance(service="web", id=f"w{i}", address=f"10.0.0.{i}", port=80, lease="l")
            for i in range(1, 4)]
    odd = [stored_before_validation(Instance(service="web", id=f"odd{n}",
                                             address=f"10.0.1.{n}", port=80, lease="l"),
                                    priority=value) for n, value in
           enumerate(("\u00b2", "\u0663", "99999999999999999999", "-1", " 7"), start=1)]
    zone, responder = responder_for([*good, *odd])
    response = ask(responder, dns.message.make_query(f"web.service.{D}", "SRV",
                                                     use_edns=0).to_wire())
    assert response.rcode() == dns.rcode.NOERROR
    records = [rr for rrset in response.answer for rr in rrset]
    assert len(records) == 8 and all(rr.priority == 1 for rr in records)
    zone.update(Snapshot(2, [*good, *odd[:1]]))
    response = ask(responder, dns.message.make_query(f"_web._tcp.service.{D}", "SRV").to_wire())
    assert len(response.answer[0]) == 4


def big_service(n: int) -> list[Instance]:
    return [Instance(service="big", id=f"big-{i}", address=f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                     f"{i & 255}", port=8000, lease="l") for i in range(n)]


def test_tcp_answers_are_whole_up_to_65535_octets_then_a_stable_window() -> None:
    _, responder = responder_for(big_service(700))
    wire = dns.message.make_query(f"big.service.{D}", "SRV").to_wire()
    raw = responder.answer(wire, tcp=True)
    assert isinstance(raw, bytes) and 60_000 < len(raw) <= 65535
    whole = dns.message.from_wire(raw)
    assert not whole.flags & dns.flags.TC and len(whole.answer[0]) == 700
    assert len(whole.additional) > 0  # as many addresses as fit, without TC (RFC 2181 9)
    _, responder = responder_for(big_service(5000))
    client = ("127.0.0.1", 40000)
    sets = []
    for _ in range(3):
        raw = responder.answer(wire, tcp=True, client=client)
        assert isinstance(raw, bytes) and len(raw) <= 65535
        response = dns.message.from_wire(raw)
        assert response.flags & dns.flags.TC
        sets.append({rr.target for rr in response.answer[0]})
        assert len(sets[-1]) > 1000
    assert sets[0] == sets[1] == sets[2]


def test_truncated_udp_answers_are_stable_per_client_socket() -> None:
    zone, responder = responder_for(big_service(60))
    wire = dns.message.make_query(f"_big._tcp.service.{D}", "SRV", use_edns=0).to_wire()

    def targets(client: tuple[str, int]) -> frozenset[dns.name.Name]:
        response = ask(responder, wire, client=client)
        assert response.flags & dns.flags.TC
        return frozenset(rr.target for rr in response.answer[0])

    haproxy = ("127.0.0.1", 53001)
    seen = {targets(haproxy) for _ in range(50)}
    assert len(seen) == 1 and len(next(iter(seen))) > 10
    spread = {targets(("127.0.0.1", port)) for port in range(20000, 20050)}
    assert len(spread) > 10  # other sockets land elsewhere on the ring
    before = next(iter(seen))
    zone.update(Snapshot(2, big_service(61)))  # one more instance
    assert len(targets(haproxy) ^ before) <= 2
