"""The image scripts/build-image made: one image for every subcommand, run as a non-root user,
with a health check, OCI labels and PILOTFISH_* settings for listening in a container."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fixtures.docker import DockerEngine

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

IMAGE = "pilotfish:latest"


def image_config(engine: DockerEngine) -> dict[str, Any]:
    """`docker image inspect` of the pilotfish image: its Config."""
    config: dict[str, Any] = json.loads(engine.docker("image", "inspect", IMAGE))[0]["Config"]
    return config


def test_image_config(compose_engine: DockerEngine) -> None:
    config = image_config(compose_engine)
    assert config["User"] == "pilotfish:pilotfish"
    assert config["Entrypoint"] == ["pilotfish"] and config["Cmd"] == ["up"]
    assert "PILOTFISH_HEALTH_URL" in config["Healthcheck"]["Test"][-1]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PILOTFISH_API"] == "0.0.0.0:8500" and env["PILOTFISH_DNS"] == "0.0.0.0:8600"
    labels = config["Labels"]
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"] not in ("", "unknown"), key
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.base.name"].startswith("pilotfish-base:bookworm-")


def test_image_runs_every_subcommand_unprivileged(compose_engine: DockerEngine) -> None:
    usage = compose_engine.docker("run", "--rm", "--network", "none", IMAGE, "--help")
    for command in ("up", "registry", "dns", "lb", "sidecar"):
        assert command in usage
    ids = compose_engine.docker("run", "--rm", "--network", "none", "--entrypoint", "id",
                                IMAGE).strip()
    assert ids.startswith("uid=10001(pilotfish)"), ids
    # The first stage's tools stay behind: no pip, no wheels in the final image.
    found = compose_engine.docker("run", "--rm", "--network", "none", "--entrypoint", "sh",
                                  IMAGE, "-c", "ls /opt/pilotfish/bin; ls / ").split()
    assert "pilotfish" in found and "pip" not in found and "wheels" not in found
