"""What a user sees of a running stack: DNS answers, the LB's pool, replies through the LB."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import dns.message
import dns.query
import dns.rdatatype
import httpx

HOST = "127.0.0.1"
SERIES = re.compile(r'^(?P<name>\w+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
LABEL = re.compile(r'(\w+)="([^"]*)"')
T = TypeVar("T")


def dns_addresses(port: int, service: str, domain: str = "pilotfish") -> set[str]:
    """The A records DNS answers for <service>.service.<domain> (empty for NXDOMAIN)."""
    query = dns.message.make_query(f"{service}.service.{domain}", dns.rdatatype.A)
    answer = dns.query.udp(query, HOST, port=port, timeout=2.0)
    return {item.address for rrset in answer.answer for item in rrset
            if item.rdtype == dns.rdatatype.A}


def srv_records(dig_output: str) -> list[tuple[int, str]]:
    """(port, address) of each SRV record in dig's output, the address from its additional
    section ("?" when it has none)."""
    targets: list[tuple[int, str]] = []
    addresses: dict[str, str] = {}
    for line in dig_output.splitlines():
        words = line.split()
        if line.startswith(";") or len(words) < 5:
            continue
        if words[3] == "SRV" and len(words) >= 8:
            targets.append((int(words[6]), words[7]))
        elif words[3] == "A":
            addresses[words[0]] = words[4]
    return sorted((port, addresses.get(target, "?")) for port, target in targets)


def draining_series(metrics_text: str) -> dict[str, float]:
    """instance (address:port) -> value of each pilotfish_lb_instance_draining series."""
    found = {}
    for line in metrics_text.splitlines():
        match = SERIES.match(line)
        if match and match["name"] == "pilotfish_lb_instance_draining":
            found[dict(LABEL.findall(match["labels"]))["instance"]] = float(match["value"])
    return found


def instances(port: int, service: str) -> dict[str, str]:
    """id -> lease of the service's instances, as the registry API lists them."""
    answer = httpx.get(f"http://{HOST}:{port}/v1/services/{service}", timeout=2.0).json()
    return {item["id"]: item["lease"] for item in answer["instances"]}


def consul_nodes(port: int, service: str) -> dict[str, str]:
    """ServiceAddress -> Node of the service's instances, as the Consul-compatible API shows."""
    answer = httpx.get(f"http://{HOST}:{port}/v1/catalog/service/{service}", timeout=2.0).json()
    return {item["ServiceAddress"]: item["Node"] for item in answer}


def lb_pool(port: int) -> set[str]:
    """address:port of every instance the LB sends new connections to (not draining)."""
    text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=2.0).text
    return {instance for instance, value in draining_series(text).items() if value == 0}


def through_lb(port: int, requests: int) -> list[str]:
    """The bodies of `requests` HTTP GETs through the LB, each on a new connection (curl-like)."""
    bodies = []
    for _ in range(requests):
        with socket.create_connection((HOST, port), timeout=5) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
            reply = b""
            while chunk := connection.recv(65536):
                reply += chunk
        head, _, body = reply.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], reply
        bodies.append(body.strip())
    return bodies


def poll(observe: Callable[[], T], done: Callable[[T], bool], timeout: float,
         interval: float = 0.02) -> tuple[T, float]:
    """Observe until done(observation); the last observation and the wall-clock time it was
    made. Fails with the last observation after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        seen, at = observe(), time.time()
        if done(seen):
            return seen, at
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {seen}"
        time.sleep(interval)
