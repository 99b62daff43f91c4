"""The README's Docker tour, its own commands read from README.md, on a real Docker engine.

The tour runs as written (tests/compose/tour.py says the one textual change: free ports for the
well-known ones): the embedded stack, steps 2-6, the switch to etcd, steps 2-6 again, `down`.
Between and beside the commands the test checks what the README says they show, and the
figures behind the words: SRV answers for the three replicas; the replicas take turns through
the LB; the Consul-compatible API puts each on a node named `sidecar-<address>`; a killed
replica leaves DNS and the LB within 1 s of its death and the LB's pool lists
only the live ones; a SIGKILLed sidecar's registrations lapse within its TTL + 1 s; the
sidecar, restarted or recreated, keeps every instance id; a replica scaled up is served within
1 s of starting; the final `down --volumes` leaves nothing behind.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from tests.compose.conftest import is_image_command
from tests.compose.probes import (
    consul_nodes,
    dns_addresses,
    draining_series,
    instances,
    lb_pool,
    poll,
    srv_records,
)
from tests.compose.stack import ComposeProject, compose_setting, docker_time
from tests.compose.tour import Step, TourShell, tour_steps
from tests.fixtures.docker import DockerEngine

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

SERVICE = "demo"
DEMO_PORT = 8080
GONE_WITHIN = 1.0  # a dead replica, after its container died
SERVED_WITHIN = 1.0  # a new replica, after its container started
SCALE = 5  # replicas after `up -d --scale demo=5`, as in the README
STARTUP = 90.0  # stack start to three replicas in DNS, on a loaded 2-core machine


class Tour:
    """The tour's shell and the test's own view of the same project."""

    def __init__(self, engine: DockerEngine) -> None:
        self.project = ComposeProject(engine)
        self.shell = TourShell(engine, self.project.project, self.project.ports)
        self.steps = tour_steps()
        self.stack = "embedded"

    def commands(self, number: int, containing: str = "") -> list[str]:
        """The commands of a step (those containing a word, if given; at least one)."""
        found = [c for c in self.steps[number].commands if containing in c]
        assert found, f"step {number} has no command with {containing!r}"
        return found

    def run(self, number: int, containing: str = "") -> str:
        """Run the step's commands (or those containing a word); their output, joined."""
        return "".join(self.shell.run(c) for c in self.commands(number, containing))

    def served(self) -> tuple[set[str], set[str]]:
        """(addresses in DNS, addresses in the LB's pool) of the demo service; an LB API not
        answering yet (docker-proxy resets while the container starts) has none."""
        try:
            entries = lb_pool(self.project.ports["LB_API"])
        except httpx.TransportError:
            entries = set()
        pool = {entry.rpartition(":")[0] for entry in entries if entry.endswith(f":{DEMO_PORT}")}
        return dns_addresses(self.project.ports["DNS"], SERVICE), pool

    def replicas(self) -> dict[str, str]:
        """Running demo containers: address -> host name (what the demo answers with)."""
        return {self.project.address(c): c["Config"]["Hostname"]
                for c in self.project.containers(SERVICE)}

    def wait_served(self, addresses: set[str], timeout: float) -> float:
        """Wait until DNS and the LB serve exactly these addresses; when that was seen."""
        _, at = poll(self.served, lambda seen: seen == (addresses, addresses), timeout)
        return at

    def ids(self) -> dict[str, str]:
        """id -> lease of every demo instance the registry API lists."""
        return instances(self.project.ports["API"], SERVICE)


def test_tour(compose_engine: DockerEngine) -> None:
    tour = Tour(compose_engine)
    try:
        for command in tour.commands(1):
            if not is_image_command(command):  # the images: made once, by the fixture
                tour.shell.run(command)
        assert tour.shell.cwd.name == "compose"
        walk_steps_2_to_6(tour, recreate_sidecar=True)
        tour.run(7)
        tour.stack = "etcd"
        assert {c["Config"]["Image"] for c in tour.project.containers("etcd1")} == \
            {"pilotfish-etcd:latest"}
        walk_steps_2_to_6(tour, recreate_sidecar=False)
        tour.run(8)
        assert tour.project.leftovers() == []
    except BaseException:
        print(tour.project.logs())
        raise
    finally:
        tour.project.purge()


def walk_steps_2_to_6(tour: Tour, recreate_sidecar: bool) -> None:
    """Steps 2-6 on a stack that step 1 (or 7) started, each checked."""
    name = tour.stack
    replicas = tour.replicas()
    assert len(replicas) == 3

    # 2. dig SRV: three answers, the replicas' addresses on port 8080. (A user types it a few
    # seconds after `up`; the test waits until the replicas are served, as long as that takes.)
    tour.wait_served(set(replicas), STARTUP)
    assert srv_records(tour.run(2)) == sorted((DEMO_PORT, a) for a in replicas)

    # 3. curl through the LB: the replicas take turns.
    answers = Counter(tour.run(3).split())
    assert set(answers) == set(replicas.values()), answers
    assert max(answers.values()) - min(answers.values()) <= 1, answers
    # Consul's view: each replica on a node named after the sidecar id, not the engine id.
    assert consul_nodes(tour.project.ports["API"], SERVICE) == {
        address: "sidecar-" + address.replace(".", "-") for address in replicas}

    step_4(tour, replicas)
    alive = set(tour.replicas())
    step_5(tour, alive, recreate_sidecar)
    step_6(tour)
    print(f"{name}: steps 2-6 done")


def step_4(tour: Tour, replicas: dict[str, str]) -> None:
    """Kill one replica: gone from DNS and the LB within 1 s; the pool lists the live ones."""
    before = {c["Id"]: tour.project.address(c) for c in tour.project.containers(SERVICE)}
    kill, *rest = tour.commands(4)
    assert kill.startswith("docker kill"), kill
    tour.shell.run(kill)
    victim = next(c for c in tour.project.containers(SERVICE, all_states=True)
                  if c["Id"] in before and not c["State"]["Running"])
    died = tour.project.died_at(victim["Id"])
    alive = set(replicas) - {before[victim["Id"]]}  # a dead container has no address
    gone_at = tour.wait_served(alive, 10.0)
    print(f"{tour.stack}: killed replica gone after {gone_at - died:.3f} s")
    assert gone_at - died <= GONE_WITHIN
    outputs = {command: tour.shell.run(command) for command in rest}
    by_word = {word: next(out for cmd, out in outputs.items() if word in cmd)
               for word in ("dig", "curl -s 127", "metrics")}
    assert set(by_word["dig"].split()) == alive
    assert set(by_word["curl -s 127"].split()) <= {replicas[a] for a in alive}
    draining = draining_series(by_word["metrics"])
    assert draining == {f"{a}:{DEMO_PORT}": 0.0 for a in alive}, by_word["metrics"]


def step_5(tour: Tour, alive: set[str], recreate_sidecar: bool) -> None:
    """SIGKILL the sidecar: its registrations lapse within the TTL + 1 s, not at once; back,
    it registers the same instance ids (also when its container is recreated)."""
    ids = tour.ids()
    assert len(ids) == len(alive) and all(i.startswith("sidecar:") for i in ids), ids
    kill, loop, restart = tour.commands(5)
    ttl = int(compose_setting(tour.stack, "sidecar", "ttl"))
    tour.shell.run(kill)
    killed = tour.project.died_at(tour.project.containers("sidecar", all_states=True)[0]["Id"])
    assert tour.served() == (alive, alive)  # a SIGKILLed sidecar withdraws nothing itself
    watching = tour.shell.start(loop)
    _, lapsed_at = poll(tour.served, lambda seen: seen == (set(), set()), ttl + 10.0, 0.05)
    print(f"{tour.stack}: SIGKILLed sidecar's registrations gone after "
          f"{lapsed_at - killed:.3f} s (TTL {ttl} s)")
    assert lapsed_at - killed <= ttl + 1.0
    seconds = tour.shell.finish(watching, loop, timeout=60).splitlines()
    assert len(seconds) == 12 and set(seconds[0].split()[2:]) == alive, seconds
    assert seconds[-1].split()[2:] == [], seconds
    assert set(tour.replicas()) == alive  # the replicas still run: only their vouching died

    tour.shell.run(restart)
    tour.wait_served(alive, 30.0)
    assert set(tour.ids()) == set(ids)
    if recreate_sidecar:  # not in the tour: a new sidecar container takes over the same ids
        old = tour.project.containers("sidecar")[0]["Id"]
        tour.shell.run("docker-compose up -d --no-deps --force-recreate sidecar")
        leases = set(tour.ids().values())
        now, _ = poll(tour.ids, lambda seen: len(seen) == len(alive)
                      and not set(seen.values()) & leases, 30.0, 0.1)
        assert tour.project.containers("sidecar")[0]["Id"] != old
        assert set(now) == set(ids), (ids, now)
        tour.wait_served(alive, 30.0)


def step_6(tour: Tour) -> None:
    """Scale up: every replica that starts is served within 1 s of starting."""
    scale, curl = tour.commands(6)
    started_before = time.time()
    seen_at: dict[str, float] = {}
    scaling = tour.shell.start(scale)
    try:
        deadline = time.monotonic() + 120.0
        while scaling.poll() is None or len(seen_at) < SCALE:
            assert time.monotonic() < deadline, f"scaling: served {seen_at}"
            in_dns, in_lb = tour.served()
            now = time.time()
            for address in in_dns & in_lb:
                seen_at.setdefault(address, now)
            time.sleep(0.02)
    finally:
        tour.shell.finish(scaling, scale, timeout=60)
    replicas = tour.replicas()
    assert len(replicas) == SCALE and set(seen_at) == set(replicas)
    for container in tour.project.containers(SERVICE):
        started = docker_time(container["State"]["StartedAt"])
        address = tour.project.address(container)
        if started > started_before:  # started by the scale command (the killed one too)
            print(f"{tour.stack}: replica {address} served {seen_at[address] - started:.3f} s "
                  "after it started")
            assert seen_at[address] - started <= SERVED_WITHIN
    answers = Counter(tour.shell.run(curl).split())
    assert set(answers) == set(replicas.values()), answers


def test_tour_steps_are_read_from_the_readme() -> None:
    """The test finds the tour where the README has it, and every step it relies on."""
    steps: dict[int, Step] = tour_steps()
    assert sorted(steps) == list(range(1, 9))
    assert any(is_image_command(c) for c in steps[1].commands)
    assert steps[5].commands[0] == "docker-compose kill sidecar"
