"""The images the end-to-end stacks need, made once per session on the session's engine."""

from __future__ import annotations

import pytest

from tests.compose.images import make_images
from tests.fixtures.docker import DockerEngine

E2E_STACKS = ("embedded", "etcd")


@pytest.fixture(scope="session")
def compose_engine(docker_engine: DockerEngine) -> DockerEngine:
    """The session's Docker engine holding every image the end-to-end stacks name."""
    make_images(docker_engine, E2E_STACKS)
    return docker_engine


@pytest.fixture(params=E2E_STACKS)
def stack_name(request: pytest.FixtureRequest) -> str:
    """Each stack the end-to-end walkthrough runs on."""
    name: str = request.param
    return name
