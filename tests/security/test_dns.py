"""DNS is no open resolver: forwarding only for allowed client networks; per-client RRL that slips.

Different clients are different loopback source addresses (127.0.0.2, 127.0.0.3, ...).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from pilotfish.config import ConfigError
from pilotfish.dns.access import (
    DEFAULT_FORWARD_ALLOW,
    ForwardAllow,
    RateLimit,
    parse_networks,
    parse_rate,
    slip,
)
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
        assert 5 <= len(full) <= 5 + int(elapsed * 5) + 1, (len(full), elapsed)
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
