"""The DNS server as users meet it: `pilotfish up`, registrations over HTTP, dig and dnspython."""

from __future__ import annotations

import re
import socket
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from tests.dns.conftest import DOMAIN, NEGATIVE_TTL, DnsStack, start_stack
from tests.fixtures.process import start_pilotfish


def addresses(message: dns.message.Message, rdtype: int = dns.rdatatype.A) -> list[str]:
    """The addresses of one type in the answer section, in order."""
    return [rr.address for rrset in message.answer if rrset.rdtype == rdtype for rr in rrset]


def hexname(address: str, port: int | None = None) -> str:
    name = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET,
                            address).hex() + f".addr.{DOMAIN}."
    return name if port is None else f"{port}.{name}"


def test_a_and_aaaa_with_dig(stack: DnsStack) -> None:
    for i in range(1, 4):
        stack.register("web", f"web-{i}", f"10.1.0.{i}", 8000 + i)
    stack.register("web", "web-v6", "fd00::7", 8080)
    stack.wait_for(f"web.service.{DOMAIN}", "A", 3)
    out = stack.dig("+short", f"web.service.{DOMAIN}", "A")
    assert sorted(out.split()) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
    assert stack.dig("+short", f"web.service.{DOMAIN}", "AAAA").split() == ["fd00::7"]
    full = stack.dig(f"web.service.{DOMAIN}", "A")
    assert "status: NOERROR" in full and " aa" in full.split("flags:")[1].split(";")[0]


def test_srv_with_additional_addresses(stack: DnsStack) -> None:
    stack.register("api", "api-1", "10.2.0.1", 9001, weight=5)
    stack.register("api", "api-2", "10.2.0.2", 9002, weight=7, meta={"priority": "3"})
    stack.register("api", "api-6", "fd00::2", 9006)
    stack.wait_for(f"api.service.{DOMAIN}", "SRV", 3)
    for name in (f"api.service.{DOMAIN}", f"_api._tcp.service.{DOMAIN}"):
        answer = stack.query(name, "SRV")
        records = {(rr.port, rr.priority, rr.weight, rr.target.to_text())
                   for rrset in answer.answer for rr in rrset}
        assert records == {(9001, 1, 5, hexname("10.2.0.1", 9001)),
                           (9002, 3, 7, hexname("10.2.0.2", 9002)),
                           (9006, 1, 1, hexname("fd00::2", 9006))}
        extra = {(rrset.name.to_text(), rr.address) for rrset in answer.additional for rr in rrset}
        assert extra == {(hexname("10.2.0.1", 9001), "10.2.0.1"),
                         (hexname("10.2.0.2", 9002), "10.2.0.2"),
                         (hexname("fd00::2", 9006), "fd00::2")}
    # the targets resolve on their own too
    assert addresses(stack.query(hexname("10.2.0.2"), "A")) == ["10.2.0.2"]
    assert addresses(stack.query(hexname("fd00::2"), "AAAA"), dns.rdatatype.AAAA) == ["fd00::2"]
    assert stack.query(hexname("fd00::2"), "A").rcode() == dns.rcode.NOERROR
    dig = stack.dig(f"_api._tcp.service.{DOMAIN}", "SRV")
    assert "ANSWER: 3" in dig and "ADDITIONAL: 4" in dig  # three addresses and the OPT record


def test_tag_filters_and_rfc2782_names(stack: DnsStack) -> None:
    stack.register("db", "db-1", "10.3.0.1", 5432, tags=["primary", "EU"])
    stack.register("db", "db-2", "10.3.0.2", 5432, tags=["replica", "eu"])
    stack.register("db", "db-3", "10.3.0.3", 5432, tags=["replica"])
    stack.wait_for(f"db.service.{DOMAIN}", "A", 3)
    assert addresses(stack.query(f"primary.db.service.{DOMAIN}", "A")) == ["10.3.0.1"]
    assert sorted(addresses(stack.query(f"replica.db.service.{DOMAIN}", "A"))) == [
        "10.3.0.2", "10.3.0.3"]
    assert sorted(addresses(stack.query(f"eu.db.service.{DOMAIN}", "A"))) == [
        "10.3.0.1", "10.3.0.2"]
    srv = stack.query(f"_db._replica.service.{DOMAIN}", "SRV")
    assert sorted(rr.target.to_text() for rrset in srv.answer for rr in rrset) == [
        hexname("10.3.0.2", 5432), hexname("10.3.0.3", 5432)]
    assert len(stack.query(f"_db._tcp.service.{DOMAIN}", "SRV").answer[0]) == 3
    assert len(stack.query(f"_db._udp.service.{DOMAIN}", "SRV").answer[0]) == 3
    assert stack.query(f"nosuch.db.service.{DOMAIN}", "A").rcode() == dns.rcode.NXDOMAIN
    assert stack.query(f"_db._nosuch.service.{DOMAIN}", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_nxdomain_and_nodata_carry_the_soa(stack: DnsStack) -> None:
    stack.register("v4only", "v4only-1", "10.4.0.1", 80)
    stack.wait_for(f"v4only.service.{DOMAIN}", "A", 1)
    cases = [
        (f"missing.service.{DOMAIN}", "A", dns.rcode.NXDOMAIN),
        (f"x.y.missing.{DOMAIN}", "SRV", dns.rcode.NXDOMAIN),
        (f"v4only.service.{DOMAIN}", "AAAA", dns.rcode.NOERROR),
        (f"v4only.service.{DOMAIN}", "TXT", dns.rcode.NOERROR),
        (f"_v4only._tcp.service.{DOMAIN}", "A", dns.rcode.NOERROR),
        (f"service.{DOMAIN}", "A", dns.rcode.NOERROR),  # an empty non-terminal exists
        (DOMAIN, "A", dns.rcode.NOERROR),
    ]
    for name, rdtype, rcode in cases:
        for edns in (False, 0):
            answer = stack.query(name, rdtype, use_edns=edns)
            assert answer.rcode() == rcode, (name, rdtype)
            assert answer.answer == [], (name, rdtype)
            assert len(answer.authority) == 1 and answer.authority[0].rdtype == dns.rdatatype.SOA
            soa = answer.authority[0]
            assert soa.name.to_text() == f"{DOMAIN}."
            assert soa[0].minimum == NEGATIVE_TTL and soa.ttl <= NEGATIVE_TTL
            assert answer.flags & dns.flags.AA
    dig = stack.dig(f"missing.service.{DOMAIN}", "A")
    assert "status: NXDOMAIN" in dig and "AUTHORITY: 1" in dig


def test_soa_and_ns_at_the_apex(stack: DnsStack) -> None:
    soa = stack.query(DOMAIN, "SOA")
    assert soa.answer[0][0].mname.to_text() == f"ns.{DOMAIN}."
    assert soa.answer[0][0].rname.to_text() == f"hostmaster.{DOMAIN}."
    ns = stack.query(DOMAIN, "NS")
    assert [rr.target.to_text() for rr in ns.answer[0]] == [f"ns.{DOMAIN}."]
    assert [rr.address for rrset in ns.additional for rr in rrset] == ["127.0.0.1"]
    assert addresses(stack.query(f"ns.{DOMAIN}", "A")) == ["127.0.0.1"]


def test_mixed_case_is_matched_and_echoed(stack: DnsStack) -> None:
    stack.register("cased", "cased-1", "10.5.0.1", 80)
    stack.wait_for(f"cased.service.{DOMAIN}", "A", 1)
    for name in (f"CaSeD.SeRvIcE.{DOMAIN.upper()}", f"_CASED._TCP.service.{DOMAIN}"):
        for edns in (False, 0):
            query = dns.message.make_query(name, "SRV" if name.startswith("_") else "A",
                                           use_edns=edns)
            wire = query.to_wire()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.settimeout(2)
                sock.sendto(wire, (stack.host, stack.port))
                raw = sock.recv(4096)
            finally:
                sock.close()
            end = 12 + len(dns.name.from_text(name).to_wire()) + 4
            assert raw[:2] == wire[:2]
            assert raw[12:end] == wire[12:end]  # the question, byte for byte
            response = dns.message.from_wire(raw)
            assert response.rcode() == dns.rcode.NOERROR and response.answer
            assert response.answer[0].name == dns.name.from_text(name)
    assert "CaSeD.SeRvIcE" in stack.dig("CaSeD.SeRvIcE." + DOMAIN, "A")


def test_answers_are_shuffled(stack: DnsStack) -> None:
    for i in range(1, 4):
        stack.register("shuffled", f"s-{i}", f"10.6.0.{i}", 80)
    stack.wait_for(f"shuffled.service.{DOMAIN}", "A", 3)
    orders = {tuple(addresses(stack.query(f"shuffled.service.{DOMAIN}", "A")))
              for _ in range(60)}
    assert len(orders) >= 4  # of the 6 permutations


def test_large_answer_truncates_over_udp_and_is_whole_over_tcp(stack: DnsStack) -> None:
    for i in range(100):
        stack.register("big", f"big-{i}", f"10.7.{i // 250}.{i % 250 + 1}", 10000 + i)
    stack.wait_for(f"big.service.{DOMAIN}", "SRV", 100, timeout=10, tcp=True)
    for rdtype, payload in (("SRV", 1232), ("SRV", 4096), ("A", 512)):
        udp = stack.query(f"big.service.{DOMAIN}", rdtype, use_edns=0, payload=payload)
        assert udp.flags & dns.flags.TC, rdtype
        assert udp.opt is not None  # OPT echoed even when truncated
        records = [rr for rrset in udp.answer for rr in rrset]
        assert 0 < len(records) < 100
        assert len(udp.to_wire()) <= min(payload, 1232)
        assert len({r.to_text() for r in records}) == len(records)  # whole, distinct records
        tcp = stack.query(f"big.service.{DOMAIN}", rdtype, tcp=True, use_edns=0)
        assert not tcp.flags & dns.flags.TC
        assert sum(len(rrset) for rrset in tcp.answer) == 100
        if rdtype == "SRV":
            assert sum(len(rrset) for rrset in tcp.additional) == 100
    plain = stack.query(f"big.service.{DOMAIN}", "A")
    assert plain.flags & dns.flags.TC and len(plain.to_wire()) <= 512
    # dig retries over TCP by itself and gets every record
    out = stack.dig("+short", f"_big._tcp.service.{DOMAIN}", "SRV")
    assert len(out.split("\n")) - 1 == 100
    ignored = stack.dig("+ignore", "+bufsize=1232", f"big.service.{DOMAIN}", "SRV")
    assert re.search(r"flags:[^;]* tc", ignored)
    metrics = stack.client.get("/metrics").text
    match = re.search(r"^pilotfish_dns_truncated_total (\S+)$", metrics, re.M)
    assert match and float(match.group(1)) >= 4


def test_tcp_pipelined_queries(stack: DnsStack) -> None:
    stack.register("piped", "piped-1", "10.8.0.1", 80)
    stack.wait_for(f"piped.service.{DOMAIN}", "A", 1)
    queries = [dns.message.make_query(f"piped.service.{DOMAIN}", "A") for _ in range(5)]
    with socket.create_connection((stack.host, stack.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in
                              (q.to_wire() for q in queries)))
        ids = set()
        for _ in queries:
            (length,) = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))
            response = dns.message.from_wire(sock.recv(length, socket.MSG_WAITALL))
            assert addresses(response) == ["10.8.0.1"]
            ids.add(response.id)
    assert ids == {q.id for q in queries}


def test_out_of_zone_is_refused(stack: DnsStack) -> None:
    for name in ("example.org", "pilotfish", "test", "xpilotfish.test"):
        answer = stack.query(name, "A")
        assert answer.rcode() == dns.rcode.REFUSED, name
        assert not answer.flags & dns.flags.AA and not answer.answer
    assert "status: REFUSED" in stack.dig("example.org", "A")


def test_any_is_answered_minimally(stack: DnsStack) -> None:
    stack.register("anyq", "anyq-1", "10.9.0.1", 80)
    stack.wait_for(f"anyq.service.{DOMAIN}", "A", 1)
    answer = stack.query(f"anyq.service.{DOMAIN}", "ANY")
    assert [rrset.rdtype for rrset in answer.answer] == [dns.rdatatype.A]
    apex = stack.query(DOMAIN, "ANY")
    assert [rrset.rdtype for rrset in apex.answer] == [dns.rdatatype.SOA]


def test_edns_is_echoed_and_unknown_versions_get_badvers(stack: DnsStack) -> None:
    stack.register("edns", "edns-1", "10.10.0.1", 80)
    stack.wait_for(f"edns.service.{DOMAIN}", "A", 1)
    dnssec = dns.message.make_query(f"edns.service.{DOMAIN}", "A", want_dnssec=True)
    answer = dns.query.udp(dnssec, stack.host, port=stack.port, timeout=2)
    assert answer.edns == 0 and answer.ednsflags & dns.flags.DO
    assert answer.payload == 1232
    cookie = dns.message.make_query(f"edns.service.{DOMAIN}", "A", use_edns=0,
                                    options=[dns.edns.GenericOption(10, b"12345678")])
    answer = dns.query.udp(cookie, stack.host, port=stack.port, timeout=2)
    assert addresses(answer) == ["10.10.0.1"] and answer.edns == 0
    v1 = dns.message.make_query(f"edns.service.{DOMAIN}", "A", use_edns=1)
    answer = dns.query.udp(v1, stack.host, port=stack.port, timeout=2)
    assert answer.rcode() == dns.rcode.BADVERS and not answer.answer


def test_critical_instances_are_not_served(stack: DnsStack) -> None:
    stack.register("health", "h-1", "10.11.0.1", 80)
    stack.register("health", "h-2", "10.11.0.2", 80, health="critical")
    stack.register("health", "h-3", "10.11.0.3", 80, health="warning")
    stack.wait_for(f"health.service.{DOMAIN}", "A", 2)
    assert sorted(addresses(stack.query(f"health.service.{DOMAIN}", "A"))) == [
        "10.11.0.1", "10.11.0.3"]
    stack.register("health", "h-1", "10.11.0.1", 80, health="critical")
    stack.register("health", "h-3", "10.11.0.3", 80, health="critical")
    stack.wait_for(f"health.service.{DOMAIN}", "A", 0)
    assert stack.query(f"health.service.{DOMAIN}", "A").rcode() == dns.rcode.NXDOMAIN


def test_registration_is_resolvable_quickly(stack: DnsStack) -> None:
    name = f"fresh.service.{DOMAIN}"
    assert stack.query(name, "A").rcode() == dns.rcode.NXDOMAIN
    started = time.monotonic()
    stack.register("fresh", "fresh-1", "10.12.0.1", 80)
    stack.wait_for(name, "A", 1, timeout=2)
    elapsed = time.monotonic() - started
    print(f"registration -> resolvable in {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5


def test_deregistration_and_expiry_remove_names_in_time(stack: DnsStack) -> None:
    stack.register("gone", "gone-1", "10.13.0.1", 80)
    stack.wait_for(f"gone.service.{DOMAIN}", "A", 1)
    started = time.monotonic()
    stack.deregister("gone", "gone-1")
    stack.wait_for(f"gone.service.{DOMAIN}", "A", 0, timeout=2)
    assert time.monotonic() - started < 0.5
    assert stack.query(hexname("10.13.0.1"), "A").rcode() == dns.rcode.NXDOMAIN

    ttl = 2
    stack.register("expiring", "exp-1", "10.14.0.1", 80, ttl=ttl)
    registered = time.monotonic()  # the lease cannot lapse before this plus ttl
    name = f"expiring.service.{DOMAIN}"
    stack.wait_for(name, "A", 1)
    last_seen = registered
    while time.monotonic() - registered < ttl + 3:
        if stack.query(name, "A").rcode() == dns.rcode.NXDOMAIN:
            break
        last_seen = time.monotonic()
        time.sleep(0.01)
    gone_after = time.monotonic() - registered
    print(f"lease ttl {ttl} s: answered until {last_seen - registered:.3f} s, "
          f"NXDOMAIN at {gone_after:.3f} s after registration")
    assert gone_after <= ttl + 1.0  # the guarantee: never served after expiry + 1 s
    assert last_seen - registered >= ttl - 0.3  # and not dropped early


def test_dns_metrics_on_the_api(stack: DnsStack) -> None:
    stack.query(f"metrics.service.{DOMAIN}", "A")
    stack.query("example.org", "AAAA")
    text = stack.client.get("/metrics").text
    assert re.search(r'^pilotfish_dns_queries_total\{qtype="A",rcode="NXDOMAIN"\} [1-9]', text,
                     re.M)
    assert re.search(r'^pilotfish_dns_queries_total\{qtype="AAAA",rcode="REFUSED"\} [1-9]',
                     text, re.M)
    assert "pilotfish_dns_view_stale 0" in text


def test_cap_on_address_answers() -> None:
    process, running = start_stack("--dns-max-answers", "4", "--dns-ttl", "2")
    try:
        for i in range(10):
            running.register("capped", f"c-{i}", f"10.15.0.{i + 1}", 80)
        running.wait_for(f"capped.service.{DOMAIN}", "SRV", 10, tcp=True)
        seen: set[str] = set()
        for _ in range(30):
            answer = running.query(f"capped.service.{DOMAIN}", "A", tcp=True)
            got = addresses(answer)
            assert len(got) == 4 and len(set(got)) == 4
            assert answer.answer[0].ttl == 2
            seen.update(got)
        assert len(seen) == 10  # a different subset per query
    finally:
        running.client.close()
        process.stop()


def test_standalone_dns_forwards_and_serves_metrics() -> None:
    upstream = start_pilotfish("dns", "--dns", "127.0.0.1:0", "--domain", "upstream.test",
                               expect=("dns",))
    try:
        forwarder = start_pilotfish(
            "dns", "--dns", "127.0.0.1:0", "--domain", DOMAIN, "--dns-forward",
            upstream.listening["dns"], "--dns-metrics", "127.0.0.1:0",
            expect=("dns", "dns metrics"))
        try:
            host, _, port = forwarder.listening["dns"].rpartition(":")
            for tcp in (False, True):
                query = dns.message.make_query("upstream.test", "SOA")
                ask = dns.query.tcp if tcp else dns.query.udp
                answer = ask(query, host, port=int(port), timeout=3)
                assert answer.rcode() == dns.rcode.NOERROR
                assert answer.answer[0].rdtype == dns.rdatatype.SOA
                nx = ask(dns.message.make_query("no.upstream.test", "A"), host,
                         port=int(port), timeout=3)
                assert nx.rcode() == dns.rcode.NXDOMAIN
            # the upstream refuses what it does not serve; that is relayed as is
            refused = dns.query.udp(dns.message.make_query("example.org", "A"), host,
                                    port=int(port), timeout=3)
            assert refused.rcode() == dns.rcode.REFUSED
            local = dns.query.udp(dns.message.make_query(DOMAIN, "SOA"), host, port=int(port),
                                  timeout=3)
            assert local.flags & dns.flags.RA and local.answer
            metrics = httpx.get(f"http://{forwarder.listening['dns metrics']}/metrics").text
            assert re.search(r'^pilotfish_dns_forwarded_total\{outcome="answered"\} 5', metrics,
                             re.M)
            health = httpx.get(f"http://{forwarder.listening['dns metrics']}/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
        finally:
            forwarder.stop()
    finally:
        upstream.stop()


@pytest.mark.parametrize("flags", [["--dns-ttl", "30"], ["--domain", "bad..name"],
                                   ["--dns-negative-ttl", "-1"]])
def test_bad_flags_are_refused_with_a_message(flags: list[str]) -> None:
    with pytest.raises(RuntimeError, match="pilotfish: --d"):
        start_pilotfish("dns", "--dns", "127.0.0.1:0", *flags, expect=("dns",), timeout=10)


def test_ipv6_loopback_listener() -> None:
    server = start_pilotfish("dns", "--dns", "[::1]:0", "--domain", DOMAIN, expect=("dns",))
    try:
        host, _, port = server.listening["dns"].rpartition(":")
        assert host == "[::1]"
        for ask in (dns.query.udp, dns.query.tcp):
            answer = ask(dns.message.make_query(DOMAIN, "NS"), "::1", port=int(port), timeout=3)
            assert answer.rcode() == dns.rcode.NOERROR
            assert [rr.address for rrset in answer.additional for rr in rrset] == ["::1"]
    finally:
        server.stop()


def test_dns_fails_static_when_the_registry_goes_away() -> None:
    registry = start_pilotfish("registry", "--api", "127.0.0.1:0")
    try:
        dns_only = start_pilotfish(
            "dns", "--registry", registry.api, "--dns", "127.0.0.1:0", "--domain", DOMAIN,
            "--dns-metrics", "127.0.0.1:0", expect=("dns", "dns metrics"))
        try:
            host, _, port = dns_only.listening["dns"].rpartition(":")
            running = DnsStack(dns_only, httpx.Client(base_url=registry.api), host, int(port))
            running.register("static", "st-1", "10.16.0.1", 80, ttl=60)
            running.wait_for(f"static.service.{DOMAIN}", "A", 1)
            registry.stop()
            metrics_url = f"http://{dns_only.listening['dns metrics']}"
            deadline = time.monotonic() + 10
            while httpx.get(f"{metrics_url}/health").status_code != 503:
                assert time.monotonic() < deadline, "the view never noticed the outage"
                time.sleep(0.1)
            assert "pilotfish_dns_view_stale 1" in httpx.get(f"{metrics_url}/metrics").text
            answer = running.query(f"static.service.{DOMAIN}", "A")
            assert addresses(answer) == ["10.16.0.1"]  # the last view, still served
            running.client.close()
        finally:
            dns_only.stop()
    finally:
        registry.stop()
