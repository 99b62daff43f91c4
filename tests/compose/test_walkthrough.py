"""The README's compose walkthrough, step by step, on a real Docker engine: the embedded and the
etcd stack as users run them (plus tests/compose/override.yml), images built offline.

SRV answers for the demo's three replicas; the LB takes turns over them; a killed replica
leaves DNS and the LB within 1 s; a SIGKILLed sidecar's registrations lapse within its TTL +
1 s; a replica scaled up is served within 1 s of starting; `down` leaves nothing behind.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.compose.probes import dig_srv, dns_addresses, lb_pool, poll, through_lb
from tests.compose.stack import ComposeStack, compose_setting, docker_time, named_volumes
from tests.fixtures.docker import DockerEngine

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

SERVICE = "demo"
DEMO_PORT = 8080
GONE_WITHIN = 1.0  # a dead replica, after its container died
SERVED_WITHIN = 1.0  # a new replica, after its container started
SCALE = 5  # replicas after `up -d --scale demo=5`, as in the README
STARTUP = 90.0  # stack start to three replicas in DNS, on a loaded 2-core machine


class Walk:
    """The user's view of one running stack: what DNS and the LB serve right now."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.dns_port = stack.ports["DNS"]
        self.lb_port = stack.ports["LB"]
        self.lb_api_port = stack.ports["LB_API"]

    def served(self) -> tuple[set[str], set[str]]:
        """(addresses in DNS, addresses in the LB's pool) of the demo service."""
        pool = {entry.rpartition(":")[0] for entry in lb_pool(self.lb_api_port)
                if entry.endswith(f":{DEMO_PORT}")}
        return dns_addresses(self.dns_port, SERVICE), pool

    def replicas(self) -> dict[str, str]:
        """Running demo containers: address -> host name (what the demo answers with)."""
        return {self.stack.address(c): c["Config"]["Hostname"]
                for c in self.stack.containers(SERVICE)}

    def wait_served(self, addresses: set[str], timeout: float) -> float:
        """Wait until DNS and the LB serve exactly these addresses; when that was seen."""
        _, at = poll(self.served, lambda seen: seen == (addresses, addresses), timeout)
        return at


def test_walkthrough(stack_name: str, compose_engine: DockerEngine) -> None:
    stack = ComposeStack(compose_engine, stack_name)
    try:
        stack.compose("up", "-d")
        walk_through(stack)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()
    assert stack.leftovers() == []


def walk_through(stack: ComposeStack) -> None:
    """README steps 2-6 on a stack that `up -d` started, each one asserted."""
    walk = Walk(stack)
    replicas = walk.replicas()
    assert len(replicas) == 3

    # dig SRV: three answers, the replicas' addresses on port 8080.
    walk.wait_served(set(replicas), STARTUP)
    assert dig_srv(walk.dns_port, SERVICE) == sorted((DEMO_PORT, a) for a in replicas)

    # curl through the LB: the replicas take turns.
    answers = Counter(through_lb(walk.lb_port, 9))
    assert set(answers) == set(replicas.values()), answers
    assert max(answers.values()) - min(answers.values()) <= 1, answers

    # Kill one replica: gone from DNS and the LB within 1 s of its death.
    victim = stack.containers(SERVICE)[0]
    stack.engine.docker("kill", victim["Id"])
    died = stack.died_at(victim["Id"])
    alive = set(replicas) - {stack.address(victim)}
    gone_at = walk.wait_served(alive, 10.0)
    print(f"{stack.name}: killed replica gone after {gone_at - died:.3f} s")
    assert gone_at - died <= GONE_WITHIN
    assert set(through_lb(walk.lb_port, 4)) == {replicas[a] for a in alive}

    # SIGKILL the sidecar: its registrations lapse within the TTL + 1 s, not at once.
    ttl = int(compose_setting(stack.name, "sidecar", "ttl"))
    stack.compose("kill", "sidecar")
    killed = stack.died_at(stack.containers("sidecar", all_states=True)[0]["Id"])
    assert walk.served() == (alive, alive)  # a SIGKILLed sidecar withdraws nothing itself
    _, lapsed_at = poll(walk.served, lambda seen: seen == (set(), set()), ttl + 10.0, 0.05)
    print(f"{stack.name}: SIGKILLed sidecar's registrations gone after {lapsed_at - killed:.3f} s"
          f" (TTL {ttl} s)")
    assert lapsed_at - killed <= ttl + 1.0
    assert set(walk.replicas()) == alive  # the replicas still run: only their vouching died

    # The sidecar back: it registers what runs again.
    stack.compose("up", "-d", "sidecar")
    walk.wait_served(alive, 30.0)

    # Scale up: every replica that starts is served within 1 s of starting.
    seen_at: dict[str, float] = {}
    scaling = stack.start("up", "-d", "--scale", f"{SERVICE}={SCALE}")
    try:
        deadline = time.monotonic() + 120.0
        while scaling.poll() is None or len(seen_at) < SCALE:
            assert time.monotonic() < deadline, f"scaling: served {seen_at}"
            in_dns, in_lb = walk.served()
            now = time.time()
            for address in in_dns & in_lb:
                seen_at.setdefault(address, now)
            time.sleep(0.02)
    finally:
        output = scaling.communicate(timeout=60)[0]
    assert scaling.returncode == 0, output
    replicas = walk.replicas()
    assert len(replicas) == SCALE and set(seen_at) == set(replicas)
    for container in stack.containers(SERVICE):
        started = docker_time(container["State"]["StartedAt"])
        address = stack.address(container)
        if started > killed:  # started by the scale command (the killed one comes back too)
            print(f"{stack.name}: replica {address} served {seen_at[address] - started:.3f} s "
                  "after it started")
            assert seen_at[address] - started <= SERVED_WITHIN
    answers = Counter(through_lb(walk.lb_port, 2 * SCALE))
    assert set(answers) == set(replicas.values()), answers

    # What `down` must remove is there now: the leftover check sees a running stack.
    running = {entry.split()[0] for entry in stack.leftovers()}
    expected = {"container", "network", "process", "address"}
    assert running >= expected | ({"volume"} if named_volumes(stack.name) else set()), running
