"""Forwarding loops (issue 21, item 9): a forwarder that is us, or that forwards back to us.

Before: `--dns-forward` at our own listener turned one query into 1,024 forwards, and other
clients' out-of-zone queries were dropped ("shed") until they timed out. Now the own
listener is refused at start, and a question coming back from an upstream while it is in
flight is answered SERVFAIL (the next upstream is then tried), so a loop costs one forward
per server. Real processes throughout: pilotfish, dnsmasq as the real upstream, dnspython.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from pilotfish.dns.loops import reaches
from tests.fixtures.process import PilotfishProcess, StartPilotfish
from tests.fixtures.servers import free_port, terminate

REAL = "real.test"  # served by dnsmasq: any name under it is 10.9.9.9
ADDRESS = "10.9.9.9"


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[int]:
    """dnsmasq on 127.0.0.1 answering every name under real.test, nothing else."""
    port = free_port()
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("\n".join([
        f"port={port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
        "no-hosts", "no-poll", "cache-size=0", f"address=/{REAL}/{ADDRESS}", "user=root",
        "log-facility=/dev/null"]) + "\n")
    process = subprocess.Popen(["dnsmasq", f"--conf-file={conf}", "--keep-in-foreground",
                                f"--pid-file={tmp_path / 'dnsmasq.pid'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                dns.query.udp(dns.message.make_query(f"up.{REAL}", "A"), "127.0.0.1",
                              port=port, timeout=0.5)
                break
            except (OSError, dns.exception.Timeout):
                assert process.poll() is None and time.monotonic() < deadline, "no dnsmasq"
        yield port
    finally:
        terminate(process)


def ask(port: int, name: str, *, tcp: bool = False, timeout: float = 1.5) -> dns.message.Message:
    """One query from a fresh socket (a client of its own), recursion desired."""
    query = dns.message.make_query(name, "A")
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)


def forwarded(process: PilotfishProcess) -> dict[str, float]:
    """pilotfish_dns_forwarded_total by outcome, from the process's /metrics."""
    text = httpx.get(f"http://{process.listening['dns metrics']}/metrics", timeout=5).text
    return {outcome: float(value) for outcome, value in re.findall(
        r'^pilotfish_dns_forwarded_total\{outcome="(\w+)"\} (\S+)', text, re.M)}


@pytest.mark.parametrize(("listen", "upstream"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", "localhost"),
    ("0.0.0.0", "127.0.0.1"),  # noqa: S104 - refused before anything binds
    ("0.0.0.0", "127.0.0.53"),  # noqa: S104 - any loopback address reaches 0.0.0.0
    ("[::]", "[::ffff:127.0.0.1]"),  # a UDP socket on :: takes IPv4 too
    ("[::1]", "[::1]"),
])
def test_forwarding_to_our_own_listener_is_refused_at_start(listen: str, upstream: str) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "pilotfish", "dns", "--dns", f"{listen}:{port}",
         "--dns-forward", f"{upstream}:{port}"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--dns-forward" in result.stderr and "own listener" in result.stderr
    assert "Traceback" not in result.stderr


def test_reaches_tells_our_listener_from_others() -> None:
    ip = ipaddress.ip_address
    assert reaches(ip("0.0.0.0"), ip("127.0.0.2"))  # noqa: S104
    assert reaches(ip("::"), ip("127.0.0.1"))
    assert not reaches(ip("127.0.0.1"), ip("127.0.0.2"))  # another loopback listener
    assert not reaches(ip("0.0.0.0"), ip("::1"))  # noqa: S104 - an IPv4 socket
    assert not reaches(ip("0.0.0.0"), ip("192.0.2.1"))  # noqa: S104 - not this host's


def test_an_unusable_forwarder_address_is_refused() -> None:
    for upstream in ("0.0.0.0:53", "127.0.0.1:0"):
        result = subprocess.run(
            [sys.executable, "-m", "pilotfish", "dns", "--dns", "127.0.0.1:0", "--dns-forward",
             upstream], capture_output=True, text=True, timeout=20)
        assert result.returncode == 2 and "not an upstream" in result.stderr, result.stderr


def test_a_two_hop_loop_leaves_other_clients_answered(pilotfish: StartPilotfish,
                                                      dnsmasq: int) -> None:
    """A forwards to B, then dnsmasq; B forwards back to A: the loop is cut at A."""
    port_a = free_port()
    b = pilotfish("dns", "--dns", "127.0.0.1:0", "--dns-forward", f"127.0.0.1:{port_a}",
                  "--dns-metrics", "127.0.0.1:0", expect=("dns", "dns metrics"))
    a = pilotfish("dns", "--dns", f"127.0.0.1:{port_a}", "--dns-forward",
                  f"{b.listening['dns']},127.0.0.1:{dnsmasq}", "--dns-metrics", "127.0.0.1:0",
                  expect=("dns", "dns metrics"))
    port_b = int(b.listening["dns"].rpartition(":")[2])

    # The first query goes round the loop once, then A falls through to dnsmasq.
    started = time.monotonic()
    first = ask(port_a, f"first.{REAL}")
    assert first.rcode() == dns.rcode.NOERROR and ADDRESS in first.to_text()
    took = time.monotonic() - started
    assert took < 1.5
    assert ask(port_a, f"over-tcp.{REAL}", tcp=True).rcode() == dns.rcode.NOERROR

    # Many clients at once, each with a name of its own, on both servers: all answered.
    names = [f"client-{i}.{REAL}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda name: ask(port_a, name), names))
        looped = list(pool.map(lambda name: ask(port_b, name), names[:10]))
    assert all(r.rcode() == dns.rcode.NOERROR and ADDRESS in r.to_text() for r in replies)
    # B has only A upstream; A finds the loop through B and answers from dnsmasq.
    assert all(r.rcode() == dns.rcode.NOERROR for r in looped), [r.rcode() for r in looped]

    at_a, at_b = forwarded(a), forwarded(b)
    print(f"loop query answered in {took * 1000:.0f} ms; forwarded at A {at_a}, at B {at_b}")
    assert at_a.get("shed", 0) == 0 and at_b.get("shed", 0) == 0, (at_a, at_b)
    # Every query's loop is cut: at A, or at B when it came back to another of A's workers
    # (each worker knows only its own questions in flight). A question is cut by the first
    # worker that sees it twice, so it visits each server at most workers + 1 times.
    workers = len(os.sched_getaffinity(0))  # --workers' default, as both were started
    assert at_a.get("loop", 0) + at_b.get("loop", 0) >= 42, (at_a, at_b)
    assert at_a.get("answered", 0) + at_a.get("loop", 0) <= 2 * (42 + 10) * workers + 5, at_a
    assert any("forwarding loop" in line for line in a.lines)
