"""DNS is no open resolver: forwarding only for allowed client networks; per-client RRL that slips.

Different clients are different loopback source addresses (127.0.0.2, 127.0.0.3, ...).
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.config import ConfigError
from pilotfish.dns.access import (
    DEFAULT_FORWARD_ALLOW,
    ForwardAllow,
    RateLimit,
    parse_networks,
    parse_rate,
    slip,
)
from pilotfish.dns.responder import FORWARD, Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings
from tests.fixtures.process import PilotfishProcess, start_pilotfish

DOMAIN = "sec.test"


def _where(process: PilotfishProcess) -> tuple[str, int]:
    host, _, port = process.listening["dns"].rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = start_pilotfish("dns", "--dns", "127.0.0.1:0", "--domain", "upstream.test",
                             expect=("dns",))
    try:
        yield server.listening["dns"]
    finally:
        server.stop()


def ask(where: tuple[str, int], name: str, source: str, tcp: bool = False,
        rdtype: str = "SOA") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, where[0], port=where[1], source=source, timeout=3)
    return dns.query.udp(query, where[0], port=where[1], source=source, timeout=3)


def test_forwarding_only_for_allowed_networks(upstream: str) -> None:
    server = start_pilotfish("dns", "--dns", "127.0.0.1:0", "--domain", DOMAIN,
                             "--dns-forward", upstream, "--dns-forward-allow", "127.0.0.2/32",
                             expect=("dns",))
    try:
        where = _where(server)
        for tcp in (False, True):
            allowed = ask(where, "upstream.test", "127.0.0.2", tcp)
            assert allowed.rcode() == dns.rcode.NOERROR and allowed.answer, allowed
            for outsider in ("127.0.0.1", "127.0.0.3"):
                refused = ask(where, "upstream.test", outsider, tcp)
                assert refused.rcode() == dns.rcode.REFUSED, refused
                assert not refused.answer
                # its own zone is answered to everyone
                assert ask(where, DOMAIN, outsider, tcp).rcode() == dns.rcode.NOERROR
    finally:
        server.stop()


def test_without_forwarding_nothing_out_of_zone_is_answered() -> None:
    server = start_pilotfish("dns", "--dns", "127.0.0.1:0", "--domain", DOMAIN,
                             expect=("dns",))
    try:
        where = _where(server)
        for tcp in (False, True):
            refused = ask(where, "example.org", "127.0.0.1", tcp, "A")
            assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
            assert not refused.flags & dns.flags.RA
    finally:
        server.stop()


def test_rate_limit_slips_per_client_and_spares_tcp() -> None:
    server = start_pilotfish("dns", "--dns", "127.0.0.1:0", "--domain", DOMAIN,
                             "--dns-rrl", "5/s", expect=("dns",))
    try:
        where = _where(server)
        started = time.monotonic()
        answers = [ask(where, DOMAIN, "127.0.0.4") for _ in range(40)]
        elapsed = time.monotonic() - started
        full = [a for a in answers if not a.flags & dns.flags.TC]
        slipped = [a for a in answers if a.flags & dns.flags.TC]
        assert all(a.answer for a in full)
        assert all(not a.answer and not a.authority and a.question for a in slipped)
        # With N workers (--workers' default) each holds the client to 5/N a second in whole
        # responses: together the rate's burst, at most N - 1 more.
        workers = len(os.sched_getaffinity(0))
        assert 5 <= len(full) <= 5 + int(elapsed * 5) + workers, (len(full), elapsed)
        assert len(slipped) == 40 - len(full)
        # another client is not held back by the first; TCP is never limited
        assert not ask(where, DOMAIN, "127.0.0.5").flags & dns.flags.TC
        over_tcp = ask(where, DOMAIN, "127.0.0.4", tcp=True)
        assert over_tcp.answer and not over_tcp.flags & dns.flags.TC
        time.sleep(1.0)  # the bucket refills at 5/s
        assert not ask(where, DOMAIN, "127.0.0.4").flags & dns.flags.TC
    finally:
        server.stop()


def test_default_forward_networks_are_loopback_and_private_only() -> None:
    allow = ForwardAllow(parse_networks(",".join(DEFAULT_FORWARD_ALLOW), "--dns-forward-allow"))
    for inside in ("127.0.0.1", "10.1.2.3", "172.31.0.1", "192.168.1.1", "::1", "fd00::1",
                   "fe80::1%eth0", "169.254.1.1", "::ffff:192.168.1.1"):
        assert allow((inside, 53)), inside
    for outside in ("8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1", "::ffff:8.8.8.8",
                    "not-an-address"):
        assert not allow((outside, 53)), outside
    assert not allow(None)


def test_bad_dns_security_flags_are_named() -> None:
    with pytest.raises(ConfigError, match="--dns-forward-allow: 'ten' is not a network"):
        parse_networks("10.0.0.0/8,ten", "--dns-forward-allow")
    for bad in ("0/s", "fast", "-3/s", "1e9"):
        with pytest.raises(ConfigError, match="--dns-rrl"):
            parse_rate(bad, "--dns-rrl")
    assert parse_rate("20/s", "--dns-rrl") == 20.0 and parse_rate("7", "--dns-rrl") == 7.0


def test_a_bucket_refills_at_the_rate_and_slip_keeps_only_the_question() -> None:
    now = [0.0]
    limit = RateLimit(2, clock=lambda: now[0])
    assert [limit.allow(("127.0.0.1", 1)) for _ in range(3)] == [True, True, False]
    now[0] += 0.5  # one response's worth
    assert [limit.allow(("127.0.0.1", 2)) for _ in range(2)] == [True, False]
    assert limit.slipped == 2
    query = dns.message.make_query("web.service.pilotfish", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("web.service.pilotfish.", 0, "IN", "A",
                                               "10.0.0.1"))
    slipped = dns.message.from_wire(slip(response.to_wire()))
    assert slipped.flags & dns.flags.TC and slipped.id == query.id
    assert slipped.question == query.question and not slipped.answer


def _forwarding_responder() -> Responder:
    stats = DnsStats()
    zone = Zone(ZoneSettings(domain="pilotfish", recursion=True), stats)
    zone.update(Snapshot(1, [Instance(service="web", id="w1", address="10.0.0.1", port=80,
                                      lease="l")]))
    allow = ForwardAllow(parse_networks("127.0.0.0/8", "--dns-forward-allow"))
    return Responder(zone, stats, forwarding=True, forward_allow=allow)


HEADER = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)  # one question, RD
HOSTILE = {
    "pointer loop in the question": HEADER + b"\xc0\x0c" + b"\x00\x01\x00\x01",
    "pointer forward past the end": HEADER + b"\xc0\xff" + b"\x00\x01\x00\x01",
    "label longer than the packet": HEADER + b"\x3fabc",
    "reserved label type 0x40": HEADER + b"\x41a\x00\x00\x01\x00\x01",
    "name over 255 octets": HEADER + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f"
    + b"c" * 63 + b"\x3f" + b"d" * 63 + b"\x01e\x00\x00\x01\x00\x01",
    "EDNS option longer than its record": struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 1)
    + b"\x03web\x07service\x09pilotfish\x00\x00\x01\x00\x01"
    + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x08\x00\x0a\x00\x40abcd",
    "OPT owner a pointer loop": struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 1)
    + b"\x03web\x07service\x09pilotfish\x00\x00\x01\x00\x01"
    + b"\xc0\x2d\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",
}


@pytest.mark.parametrize("packet", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_packets_get_formerr_or_nothing_never_a_relay(packet: bytes) -> None:
    responder = _forwarding_responder()
    for client in (("8.8.8.8", 53), ("127.0.0.1", 53)):
        reply = responder.answer(packet, False, client)
        assert reply is None or (isinstance(reply, bytes)
                                 and reply[3] & 0x0F == dns.rcode.FORMERR), (reply, client)


def test_many_and_unknown_edns_options_are_answered_within_the_udp_limit() -> None:
    responder = _forwarding_responder()
    query = dns.message.make_query("web.service.pilotfish", "A", use_edns=0, payload=65535,
                                   options=[dns.edns.GenericOption(65001, b"x" * 4)
                                            for _ in range(100)])
    reply = responder.answer(query.to_wire(), False, ("8.8.8.8", 53))
    assert isinstance(reply, bytes) and len(reply) <= 1232
    answer = dns.message.from_wire(reply)
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300), st.sampled_from(["example.org", "web.service.pilotfish"]),
       st.booleans())
def test_no_packet_from_outside_the_allowed_networks_is_ever_relayed(
        noise: bytes, name: str, tcp: bool) -> None:
    responder = _forwarding_responder()
    query = bytearray(dns.message.make_query(name, "A").to_wire())
    for packet in (noise, bytes(query) + noise[:8], noise[:12] + bytes(query[12:])):
        assert responder.answer(packet, tcp, ("203.0.113.9", 53)) is not FORWARD
    assert responder.answer(dns.message.make_query("example.org", "A").to_wire(), tcp,
                            ("127.0.0.1", 53)) is FORWARD
