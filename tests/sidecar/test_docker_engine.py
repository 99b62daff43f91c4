"""The Docker engine fixture itself: containers run, labels show, a restart keeps the data."""

from __future__ import annotations

import signal

from tests.fixtures.docker import DockerEngine


def test_runs_a_busybox_container_with_labels(docker: DockerEngine) -> None:
    """A container started on the fixture's engine runs, carries its labels and can be stopped."""
    cid = docker.run("--network", "host", "--name", "fx-one", "-l", "SERVICE_NAME=web")
    assert cid in docker.container_ids()
    details = docker.inspect("fx-one")
    assert details["Config"]["Labels"]["SERVICE_NAME"] == "web"
    assert details["HostConfig"]["NetworkMode"] == "host"
    docker.stop_containers("fx-one")
    assert cid not in docker.container_ids()
    assert cid in docker.container_ids(all_states=True)


def test_engine_comes_back_after_sigkill_with_its_data(docker: DockerEngine) -> None:
    """SIGKILL and start again: same engine id, the stopped container is still known."""
    engine_id = docker.engine_id()
    cid = docker.run("--network", "none", "--name", "fx-two")
    docker.stop_containers("fx-two")
    docker.restart(signal.SIGKILL)
    assert docker.engine_id() == engine_id
    assert cid in docker.container_ids(all_states=True)
