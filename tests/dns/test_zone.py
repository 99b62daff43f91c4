"""Fast unit tests of the encoder: the zone built from snapshots and the responder over it."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import DNSRecord

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.config import ConfigError
from pilotfish.dns.answers import Answer
from pilotfish.dns.names import addr_label, domain_name, encode, tag_label
from pilotfish.dns.records import QUESTION_NAME, address_record
from pilotfish.dns.responder import FORWARD, Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings, key

D = "sd.example"


def inst(service: str, iid: str, address: str, port: int = 80, **kw: object) -> Instance:
    return Instance(service=service, id=iid, address=address, port=port, lease="l1", **kw)  # type: ignore[arg-type]


def build(*instances: Instance, **settings: object) -> tuple[Zone, Responder, DnsStats]:
    stats = DnsStats()
    zone = Zone(ZoneSettings(domain=D, **settings), stats)  # type: ignore[arg-type]
    zone.update(Snapshot(1, instances))
    return zone, Responder(zone, stats, forwarding=False), stats


def ask(responder: Responder, name: str, rdtype: str = "A", tcp: bool = False,
        **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    raw = responder.answer(query.to_wire(), tcp=tcp)
    assert isinstance(raw, bytes)
    response = dns.message.from_wire(raw)
    assert response.id == query.id
    assert response.question == query.question
    return response


def rrs(message: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rr.to_text() for rrset in getattr(message, section) for rr in rrset)


WEB = (inst("web", "w1", "10.0.0.1", 81, tags=("blue",)),
       inst("web", "w2", "10.0.0.2", 82, weight=9),
       inst("web", "w3", "2001:db8::3", 83, tags=("Blue", "has.dot")))


def test_names() -> None:
    assert domain_name("SD.Example.") == "sd.example"
    assert encode("A.b") == b"\x01a\x01b\x00"
    assert addr_label("127.0.0.1") == "7f000001"
    assert addr_label("::1") == "0" * 31 + "1"
    assert tag_label("Blue") == "blue" and tag_label("has.dot") is None
    assert tag_label("ü") is None and tag_label("-x") is None
    for bad in ("", "a..b", "a b", "x" * 64, ".".join(["abcdefghij"] * 20)):
        with pytest.raises(ConfigError):
            domain_name(bad)


def test_a_aaaa_srv_and_additional() -> None:
    _, responder, stats = build(*WEB)
    assert rrs(ask(responder, f"web.service.{D}")) == ["10.0.0.1", "10.0.0.2"]
    assert rrs(ask(responder, f"web.service.{D}", "AAAA")) == ["2001:db8::3"]
    srv = ask(responder, f"_web._tcp.service.{D}", "SRV")
    assert rrs(srv) == [f"1 1 81 81.0a000001.addr.{D}.",
                        f"1 1 83 83.20010db8000000000000000000000003.addr.{D}.",
                        f"1 9 82 82.0a000002.addr.{D}."]
    assert rrs(srv, "additional") == ["10.0.0.1", "10.0.0.2", "2001:db8::3"]
    assert srv.flags & dns.flags.AA and not srv.flags & dns.flags.RA
    assert stats.queries("SRV", "NOERROR") == 1 and stats.queries("A", "NOERROR") == 1


def test_tags_and_rfc2782() -> None:
    _, responder, _ = build(*WEB)
    assert rrs(ask(responder, f"blue.web.service.{D}")) == ["10.0.0.1"]
    assert rrs(ask(responder, f"blue.web.service.{D}", "AAAA")) == ["2001:db8::3"]
    assert len(rrs(ask(responder, f"_web._blue.service.{D}", "SRV"))) == 2
    assert ask(responder, f"_web._blue.service.{D}", "A").rcode() == dns.rcode.NOERROR
    assert ask(responder, f"has.dot.web.service.{D}").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(("name", "rdtype", "rcode"), [
    (f"nope.service.{D}", "A", dns.rcode.NXDOMAIN),
    (f"web.service.{D}", "MX", dns.rcode.NOERROR),
    (f"web.service.{D}", "TXT", dns.rcode.NOERROR),
    (f"_web.service.{D}", "A", dns.rcode.NXDOMAIN),  # nothing below it
    (f"_tcp.service.{D}", "A", dns.rcode.NOERROR),  # empty non-terminal
    (f"_blue.service.{D}", "SRV", dns.rcode.NOERROR),
    (f"81.0a000001.addr.{D}", "AAAA", dns.rcode.NOERROR),
    (f"addr.{D}", "A", dns.rcode.NOERROR),
    (f"0a000009.addr.{D}", "A", dns.rcode.NXDOMAIN),
    (f"0a000001.addr.{D}", "AAAA", dns.rcode.NOERROR),
    (D, "AAAA", dns.rcode.NOERROR),
])
def test_negative_answers_have_the_soa(name: str, rdtype: str, rcode: int) -> None:
    _, responder, _ = build(*WEB, negative_ttl=7)
    for edns in (False, 0):
        response = ask(responder, name, rdtype, use_edns=edns)
        assert response.rcode() == rcode and not response.answer
        (soa,) = response.authority
        assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text(D)
        assert soa.ttl == 7 and soa[0].minimum == 7


def test_case_is_echoed_and_id_patched() -> None:
    _, responder, _ = build(*WEB)
    query = dns.message.make_query("WeB.SERVICE.Sd.Example", "A")
    wire = query.to_wire()
    raw = responder.answer(wire)
    assert isinstance(raw, bytes)
    assert raw[:2] == wire[:2] and raw[12:12 + len(wire) - 12] == wire[12:]
    again = responder.answer(b"\xbe\xef" + wire[2:])
    assert isinstance(again, bytes) and again[:2] == b"\xbe\xef"


def test_rd_and_cd_are_copied() -> None:
    _, responder, _ = build(*WEB)
    query = dns.message.make_query(f"web.service.{D}", "A")
    query.flags |= dns.flags.CD
    query.flags &= ~dns.flags.RD
    response = dns.message.from_wire(responder.answer(query.to_wire()))  # type: ignore[arg-type]
    assert response.flags & dns.flags.CD and not response.flags & dns.flags.RD


def test_incremental_update_touches_only_changed_services() -> None:
    zone, responder, _ = build(*WEB, inst("db", "d1", "10.0.0.1", 5432))
    db_answer = zone.table[key(encode(f"db.service.{D}"), 1)]
    web_answer = zone.table[key(encode(f"web.service.{D}"), 1)]
    zone.update(Snapshot(2, (*WEB[:2], inst("db", "d1", "10.0.0.1", 5432))))
    assert zone.table[key(encode(f"db.service.{D}"), 1)] is db_answer
    assert zone.table[key(encode(f"web.service.{D}"), 1)] is not web_answer
    assert ask(responder, f"web.service.{D}", "AAAA").answer == []
    assert ask(responder, f"20010db8000000000000000000000003.addr.{D}", "AAAA").rcode() == 3
    # 10.0.0.1 is shared by web and db: its name lives while either does
    zone.update(Snapshot(3, WEB[1:2]))
    assert ask(responder, f"0a000001.addr.{D}").rcode() == dns.rcode.NXDOMAIN
    assert ask(responder, f"db.service.{D}").rcode() == dns.rcode.NXDOMAIN
    assert rrs(ask(responder, f"0a000002.addr.{D}")) == ["10.0.0.2"]
    zone.update(Snapshot(4, ()))
    assert ask(responder, f"web.service.{D}").rcode() == dns.rcode.NXDOMAIN
    assert {k[:-4] for k in zone.table} == {encode(D)}  # only the apex remains
    assert set(zone.names) == {encode(D), encode(f"ns.{D}")}


def test_critical_instances_are_skipped() -> None:
    _, responder, _ = build(inst("h", "h1", "10.0.0.1", health="critical"),
                            inst("h", "h2", "10.0.0.2", health="warning"))
    assert rrs(ask(responder, f"h.service.{D}")) == ["10.0.0.2"]
    _, responder, _ = build(inst("h", "h1", "10.0.0.1", health="critical"))
    assert ask(responder, f"h.service.{D}").rcode() == dns.rcode.NXDOMAIN


def test_cap_gives_each_client_a_stable_window() -> None:
    many = [inst("m", f"m{i}", f"10.1.0.{i}") for i in range(1, 11)]
    zone, responder, _ = build(*many, max_answers=3)
    plain = {tuple(rrs(ask(responder, f"m.service.{D}"))) for _ in range(200)}
    assert all(len(s) == 3 for s in plain)
    assert {a for s in plain for a in s} == {f"10.1.0.{i}" for i in range(1, 11)}
    assert len(plain) == 10  # one window per starting record, so plain clients spread
    assert len(rrs(ask(responder, f"m.service.{D}", "SRV"))) == 10  # the cap is A/AAAA only
    wire = dns.message.make_query(f"m.service.{D}", "A").to_wire()
    clients = [("10.9.0.1", port) for port in range(1000, 1040)]

    def window(client: tuple[str, int]) -> set[str]:
        return set(rrs(dns.message.from_wire(responder.answer(wire, client=client))))  # type: ignore[arg-type]

    before = {client: window(client) for client in clients}
    assert all(window(client) == seen for client, seen in before.items())  # stable
    assert len({frozenset(s) for s in before.values()}) > 3  # and not the same for everyone
    zone.update(Snapshot(2, many[1:]))  # one instance leaves: each window moves by one at most
    for client, seen in before.items():
        assert len(window(client) - seen) <= 1 and "10.1.0.1" not in window(client)
    _, responder, _ = build(*many[:3])
    orders = {tuple(rr.to_text() for rr in ask(responder, f"m.service.{D}").answer[0])
              for _ in range(100)}
    assert len(orders) == 6


def test_whole_answers_rotate() -> None:
    many = [inst("r", f"r{i}", f"10.1.0.{i}") for i in range(1, 9)]
    _, responder, _ = build(*many, max_answers=0)
    orders = [[rr.to_text() for rr in ask(responder, f"r.service.{D}").answer[0]]
              for _ in range(100)]
    assert all(sorted(order) == sorted(orders[0]) for order in orders)
    assert len({order[0] for order in orders}) == 8  # every record gets to be first


def test_truncation_keeps_whole_records() -> None:
    many = [inst("big", f"b{i}", f"10.2.{i // 200}.{i % 200 + 1}", 1000 + i) for i in range(100)]
    _, responder, stats = build(*many, max_answers=0)
    for rdtype, edns, payload, limit in (("SRV", 0, 1232, 1232), ("A", False, 512, 512),
                                         ("SRV", 0, 300, 512), ("SRV", 0, 65000, 1232)):
        query = dns.message.make_query(f"big.service.{D}", rdtype, use_edns=edns,
                                       payload=payload)
        raw = responder.answer(query.to_wire())
        assert isinstance(raw, bytes) and len(raw) <= limit
        response = dns.message.from_wire(raw)
        assert response.flags & dns.flags.TC
        assert 0 < len(response.answer[0]) < 100 and not response.additional
        assert (response.edns == 0) == (edns is not False)
        full = dns.message.from_wire(responder.answer(query.to_wire(), tcp=True))  # type: ignore[arg-type]
        assert len(full.answer[0]) == 100 and not full.flags & dns.flags.TC
    assert stats.truncated == 4


def test_answer_truncate_with_nothing_fitting() -> None:
    rr = address_record(QUESTION_NAME, "10.0.0.1", 0)
    answer = Answer(0, 0, [rr] * 3)
    question = encode("x.y") + b"\x00\x01\x00\x01"
    raw, truncated = answer.render(b"\x00\x01", 0, question, b"", 12 + len(question) + 5)
    parsed = DNSRecord.parse(raw)
    assert truncated
    assert parsed.header.tc == 1 and parsed.header.a == 0


def test_malformed_and_unusual_queries() -> None:
    _, responder, stats = build(*WEB)
    good = dns.message.make_query(f"web.service.{D}", "A").to_wire()
    assert responder.answer(b"") is None and responder.answer(b"\x00" * 11) is None
    assert responder.answer(good[:2] + bytes([good[2] | 0x80]) + good[3:]) is None  # a response
    assert stats.dropped == 3

    def rcode_of(packet: bytes) -> int:
        raw = responder.answer(packet)
        assert isinstance(raw, bytes) and raw[:2] == packet[:2]
        return raw[3] & 0x0F

    assert rcode_of(good[:4] + b"\x00\x02" + good[6:]) == dns.rcode.FORMERR  # QDCOUNT 2
    assert rcode_of(good[:4] + b"\x00\x00" + good[6:]) == dns.rcode.FORMERR  # no question
    assert rcode_of(good[:-3]) == dns.rcode.FORMERR  # cut short
    assert rcode_of(good[:12] + b"\xc0\x0c" + good[-4:]) == dns.rcode.FORMERR  # pointer loop
    assert rcode_of(good[:2] + bytes([0x10]) + good[3:]) == dns.rcode.NOTIMP  # opcode STATUS
    assert rcode_of(good[:-2] + b"\x00\x03") == dns.rcode.REFUSED  # class CH
    axfr = dns.message.make_query(f"{D}", "AXFR").to_wire()
    assert rcode_of(axfr) == dns.rcode.REFUSED
    assert rcode_of(good + b"junk") == dns.rcode.NOERROR  # trailing bytes are ignored
    two_opts = dns.message.make_query(f"web.service.{D}", "A", use_edns=0).to_wire()
    opt = two_opts[len(good):]
    doubled = two_opts[:10] + b"\x00\x02" + two_opts[12:] + opt
    assert rcode_of(doubled) == dns.rcode.FORMERR


def test_badvers_and_forward_marker() -> None:
    zone, responder, stats = build(*WEB)
    v1 = dns.message.make_query(f"web.service.{D}", "A", use_edns=1)
    response = dns.message.from_wire(responder.answer(v1.to_wire()))  # type: ignore[arg-type]
    assert response.rcode() == dns.rcode.BADVERS and stats.queries("A", "BADVERS") == 1
    forwarding = Responder(zone, stats, forwarding=True)
    out = dns.message.make_query("example.org", "A").to_wire()
    assert forwarding.answer(out) is FORWARD
    local = dns.message.from_wire(forwarding.answer(  # type: ignore[arg-type]
        dns.message.make_query(f"nope.{D}", "A").to_wire()))
    assert local.rcode() == dns.rcode.NXDOMAIN


def test_priority_from_meta_and_ttl() -> None:
    _, responder, _ = build(inst("p", "p1", "10.0.0.1", meta={"priority": "7"}, weight=3),
                            inst("p", "p2", "10.0.0.2"), ttl=2)  # no priority: 1
    srv = ask(responder, f"p.service.{D}", "SRV")
    assert rrs(srv) == [f"1 1 80 80.0a000002.addr.{D}.", f"7 3 80 80.0a000001.addr.{D}."]
    assert srv.answer[0].ttl == 2 and srv.additional[0].ttl == 2


def test_wire_counts_match_sections() -> None:
    _, responder, _ = build(*WEB)
    raw = responder.answer(dns.message.make_query(f"web.service.{D}", "SRV",
                                                  use_edns=0).to_wire())
    assert isinstance(raw, bytes)
    assert struct.unpack("!HHHH", raw[4:12]) == (1, 3, 0, 4)
    parsed = DNSRecord.parse(raw)
    assert len(parsed.rr) == 3 and len(parsed.ar) == 4
