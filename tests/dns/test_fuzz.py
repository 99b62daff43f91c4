"""Random and mutated packets: the server answers or drops, never dies, and keeps answering."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.catalog.interface import Snapshot
from pilotfish.catalog.model import Instance
from pilotfish.dns.responder import Responder
from pilotfish.dns.stats import DnsStats
from pilotfish.dns.zone import Zone, ZoneSettings
from tests.dns.conftest import DOMAIN, DnsStack, start_stack

NAMES = [f"web.service.{DOMAIN}", f"_web._tcp.service.{DOMAIN}", f"blue.web.service.{DOMAIN}",
         f"nope.service.{DOMAIN}", DOMAIN, "example.org", f"0a000001.addr.{DOMAIN}"]
TYPES = ["A", "AAAA", "SRV", "ANY", "SOA", "NS", "TXT", "AXFR", "OPT"]


def seed_queries() -> list[bytes]:
    """Valid queries of every shape the server meets, to mutate."""
    out = []
    for name in NAMES:
        for rdtype in TYPES:
            for edns in (False, 0, 1):
                out.append(dns.message.make_query(name, rdtype, use_edns=edns).to_wire())
    return out


SEEDS = seed_queries()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with bytes flipped, cut, inserted or header fields rewritten."""
    packet = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "count", "byte"]))
        if action == "flip" and packet:
            i = draw(st.integers(0, len(packet) - 1))
            packet[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut" and packet:
            del packet[draw(st.integers(0, len(packet) - 1)):]
        elif action == "insert":
            i = draw(st.integers(0, len(packet)))
            packet[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif action == "count" and len(packet) >= 12:
            i = draw(st.sampled_from([2, 4, 6, 8, 10]))
            packet[i:i + 2] = struct.pack("!H", draw(st.integers(0, 65535)))
        elif action == "byte" and packet:
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    return bytes(packet)


PACKETS = st.one_of(st.binary(max_size=600), mutated())


def zone_responder() -> Responder:
    stats = DnsStats()
    zone = Zone(ZoneSettings(domain=DOMAIN), stats)
    zone.update(Snapshot(1, [
        Instance(service="web", id=f"w{i}", address=f"10.0.0.{i}", port=80, lease="l",
                 tags=("blue",)) for i in range(1, 8)]))
    return Responder(zone, stats)


RESPONDER = zone_responder()


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(PACKETS, st.booleans())
def test_responder_never_raises_and_replies_are_valid(packet: bytes, tcp: bool) -> None:
    reply = RESPONDER.answer(packet, tcp=tcp)
    if reply is None:
        return
    assert isinstance(reply, bytes)
    assert reply[:2] == packet[:2] and reply[2] & 0x80  # our ID, and a response
    assert len(reply) <= (65535 if tcp else 1232)
    assert reply[2] & 0x78 == packet[2] & 0x78  # the opcode is echoed
    if not reply[2] & 0x78:
        dns.message.from_wire(reply)  # well-formed wire (binary labels included)


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[DnsStack]:
    process, running = start_stack()
    try:
        running.register("web", "web-1", "10.0.0.1", 80, tags=["blue"], ttl=600)  # outlives the run
        running.wait_for(f"web.service.{DOMAIN}", "A", 1)
        yield running
    finally:
        running.client.close()
        process.stop()


def assert_still_answers(stack: DnsStack) -> None:
    answer = stack.query(f"web.service.{DOMAIN}", "A")
    assert answer.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in answer.answer[0]] == ["10.0.0.1"]
    assert stack.process.process.poll() is None
    # bad input is answered or dropped on purpose; a caught exception would be a bug
    assert not [line for line in stack.process.lines if "failed to answer" in line]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.lists(PACKETS, min_size=1, max_size=10))
def test_udp_server_survives_fuzz(fuzz_stack: DnsStack, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for packet in packets:
            sock.sendto(packet, (fuzz_stack.host, fuzz_stack.port))
        # replies, if any, come back with the ID of a packet we sent
        sock.settimeout(0.02)
        try:
            while True:
                reply = sock.recv(65535)
                assert reply[:2] in {p[:2] for p in packets}
        except TimeoutError:
            pass
    assert_still_answers(fuzz_stack)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(packets=st.lists(PACKETS, min_size=1, max_size=5), framing=st.booleans())
def test_tcp_server_survives_fuzz(fuzz_stack: DnsStack, packets: list[bytes],
                                  framing: bool) -> None:
    with socket.create_connection((fuzz_stack.host, fuzz_stack.port), timeout=2) as sock:
        if framing:
            data = b"".join(struct.pack("!H", len(p)) + p for p in packets)
        else:
            data = b"".join(packets)  # raw garbage as a length-prefixed stream
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.3)
            while sock.recv(65535):
                pass
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    assert_still_answers(fuzz_stack)
