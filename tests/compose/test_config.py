"""Every compose file is valid for Debian's docker-compose (1.29) and has what users expect:
health checks that dependents wait on, restart policies, a read-only Docker socket for the
sidecar (the engine's, from PF_DOCKER_SOCKET), a sidecar id that outlives its container, the
demo app's labels and replicas, and images that scripts/demo-images makes where it can."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

from tests.compose.stack import COMPOSE_DIR, REPO, STACKS, compose_setting, images_named

# What only a registry has, so scripts/demo-images cannot make it (README, docs/compose.md).
REGISTRY_ONLY = {"zookeeper": {"zookeeper:3.8"}, "consul": {"hashicorp/consul:1.20"}}


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`docker-compose config -q` must pass; then the merged configuration it prints."""
    command = ["docker-compose"] + [arg for f in files for arg in ("-f", f)]
    for args in (["config", "-q"], ["config"]):
        result = subprocess.run(command + args, cwd=COMPOSE_DIR, capture_output=True, text=True,
                                env=env, timeout=60)
        assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_every_stack_is_in_compose_dir() -> None:
    assert sorted(p.stem for p in COMPOSE_DIR.glob("*.yml")) == sorted(STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_stack_config(stack: str) -> None:
    services = compose_config(f"{stack}.yml")["services"]
    assert {"sidecar", "demo"} <= set(services)
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        for dependency, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency
    assert "127.0.0.1:8500:8500/tcp" in _ports(services)  # the registry API
    assert {"127.0.0.1:8600:8600/udp", "127.0.0.1:8600:8600/tcp"} <= _ports(services)  # DNS
    assert "127.0.0.1:8080:8080/tcp" in _ports(services)  # the demo app through the LB
    sidecar = services["sidecar"]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in sidecar["volumes"]
    demo = services["demo"]
    assert demo["labels"]["SERVICE_NAME"] == "demo"
    assert demo["labels"]["SERVICE_TAGS"]
    assert demo["deploy"]["replicas"] == 3
    assert demo["depends_on"] == {"sidecar": {"condition": "service_healthy"}}


def _ports(services: dict[str, Any]) -> set[str]:
    found = set()
    for service in services.values():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # the long syntax, as docker compose v2 prints it
                port = (f"{port['host_ip']}:{port['published']}:{port['target']}/"
                        f"{port.get('protocol', 'tcp')}")
            found.add(port)
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_sidecar_reads_the_engine_socket_it_is_given(stack: str) -> None:
    env = {**os.environ, "PF_DOCKER_SOCKET": "/run/other/docker.sock"}
    config = compose_config(f"{stack}.yml", env=env)
    assert config["services"]["sidecar"]["volumes"] == [
        "/run/other/docker.sock:/var/run/docker.sock:ro"]


@pytest.mark.parametrize("stack", STACKS)
def test_sidecar_id_outlives_the_container(stack: str) -> None:
    """Without --sidecar-id the id is the host name, a new one for every new container."""
    assert compose_setting(stack, "sidecar", "sidecar-id") == "sidecar"


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_made_locally(stack: str) -> None:
    script = (REPO / "scripts" / "demo-images").read_text()
    made = {word for line in script.splitlines() if line.startswith("#   ")
            for word in line.split()[1:2]}
    assert images_named(COMPOSE_DIR / f"{stack}.yml") - made == REGISTRY_ONLY.get(stack, set())
