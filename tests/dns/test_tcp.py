"""Hostile and heavy TCP clients against a running server: nobody else loses service."""

from __future__ import annotations

import contextlib
import select
import socket
import statistics
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from pilotfish.dns.server import TCP_IDLE, TCP_MAX_CONNECTIONS
from tests.dns.conftest import DOMAIN, DnsStack, start_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[DnsStack]:
    """A server of this module's own."""
    process, running = start_stack("--dns-max-answers", "0")
    try:
        running.register("tcp", "tcp-1", "10.20.0.1", 80)
        running.wait_for(f"tcp.service.{DOMAIN}", "A", 1)
        yield running
    finally:
        running.client.close()
        process.stop()


def framed(name: str, rdtype: str = "A") -> bytes:
    wire = dns.message.make_query(name, rdtype).to_wire()
    return struct.pack("!H", len(wire)) + wire


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed mid-message"
        data += chunk
    return data


def read_raw(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)


def read_framed(sock: socket.socket) -> dns.message.Message:
    return dns.message.from_wire(read_raw(sock))


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (EOF or reset is readable)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trickling_clients_neither_lock_out_others_nor_stay(stack: DnsStack) -> None:
    """Issue 13 item 5: a full house of one-byte-every-second connections."""
    trickling: list[socket.socket] = []
    try:
        for _ in range(TCP_MAX_CONNECTIONS + 20):
            sock = socket.create_connection((stack.host, stack.port), timeout=5)
            sock.sendall(b"\x00")  # half a length prefix, never completed
            trickling.append(sock)
        started = time.monotonic()
        for _ in range(5):  # a newcomer is served although every slot was taken
            with socket.create_connection((stack.host, stack.port), timeout=2) as fresh:
                fresh.sendall(framed(f"tcp.service.{DOMAIN}"))
                assert read_framed(fresh).rcode() == dns.rcode.NOERROR
        assert time.monotonic() - started < 2
        while time.monotonic() - started < TCP_IDLE + 3:
            for sock in trickling:
                with contextlib.suppress(OSError):
                    sock.send(b"\x00", socket.MSG_DONTWAIT)
            if all(closed_by_peer(sock) for sock in trickling):
                break
            time.sleep(0.5)
        still_open = sum(not closed_by_peer(sock) for sock in trickling)
        assert still_open == 0, f"{still_open} trickling connections outlived {TCP_IDLE} s"
    finally:
        for sock in trickling:
            sock.close()
    # a connection that keeps asking stays open past the idle time
    with socket.create_connection((stack.host, stack.port), timeout=2) as steady:
        until = time.monotonic() + TCP_IDLE + 1
        while time.monotonic() < until:
            steady.sendall(framed(f"tcp.service.{DOMAIN}"))
            assert read_framed(steady).rcode() == dns.rcode.NOERROR
            time.sleep(0.5)


def test_pipelined_big_answers_do_not_stall_others(stack: DnsStack) -> None:
    """Issue 13 item 6: 1,000 pipelined SRV queries for a big service, left unread."""
    for i in range(1200):
        stack.register("piles", f"p-{i}", f"10.21.{i // 250}.{i % 250 + 1}", 9000, ttl=120)
    stack.wait_for(f"piles.service.{DOMAIN}", "A", 1200, timeout=20, tcp=True)
    pid = stack.process.process.pid
    before = rss_kib(pid)
    query = framed(f"_piles._tcp.service.{DOMAIN}", "SRV")
    with socket.create_connection((stack.host, stack.port), timeout=10) as hog:
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        hog.sendall(query * 1000)
        latencies = []
        until = time.monotonic() + 2
        while time.monotonic() < until:
            sent = time.monotonic()
            answer = stack.query(f"tcp.service.{DOMAIN}", "A")
            latencies.append(time.monotonic() - sent)
            assert answer.rcode() == dns.rcode.NOERROR
            time.sleep(0.01)
        grown = rss_kib(pid) - before
        print(f"while 1,000 answers wait: UDP p50 {statistics.median(latencies) * 1000:.2f} ms "
              f"max {max(latencies) * 1000:.1f} ms, server RSS +{grown} KiB")
        assert statistics.median(latencies) < 0.05 and max(latencies) < 0.5
        assert grown < 40_000
        for n in range(1000):  # every answer arrives once the client reads
            raw = read_raw(hog)
            assert raw[:2] == query[2:4] and raw[3] & 0x0F == dns.rcode.NOERROR
            assert struct.unpack_from("!H", raw, 6)[0] == 1200
            if n % 200 == 0:
                assert len(dns.message.from_wire(raw).answer[0]) == 1200


def test_opcodes_are_echoed_on_the_wire(stack: DnsStack) -> None:
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS):
        query = dns.message.make_query(DOMAIN, "SOA")
        query.set_opcode(opcode)
        for tcp in (False, True):
            ask = dns.query.tcp if tcp else dns.query.udp
            response = ask(query, stack.host, port=stack.port, timeout=2)  # raises on mismatch
            assert response.opcode() == opcode and response.rcode() == dns.rcode.NOTIMP
    out = stack.dig("+opcode=notify", "+noedns", DOMAIN, "SOA")
    assert "opcode: NOTIFY" in out and "status: NOTIMP" in out and "mismatch" not in out


def test_oversized_udp_query_is_formerr(stack: DnsStack) -> None:
    padding = dns.edns.GenericOption(12, b"\x00" * 4200)
    big = dns.message.make_query(f"tcp.service.{DOMAIN}", "A", use_edns=0,
                                 options=[padding]).to_wire(max_size=65535)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(big, (stack.host, stack.port))
        reply = sock.recv(4096)
    assert reply[:2] == big[:2] and reply[3] & 0x0F == dns.rcode.FORMERR
