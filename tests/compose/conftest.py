"""The images the tour's stacks need, made once per session by the README's own command."""

from __future__ import annotations

import pytest

from tests.compose.tour import TourShell, tour_steps
from tests.fixtures.docker import DockerEngine


def is_image_command(command: str) -> bool:
    """Whether a tour command is the one that makes the images (scripts/demo-images)."""
    return "scripts/demo-images" in command


@pytest.fixture(scope="session")
def compose_engine(docker_engine: DockerEngine) -> DockerEngine:
    """The session's Docker engine holding every image the tour's stacks name: the tour's
    image command (step 1), run once here for the tour and for test_image.py."""
    commands = [c for c in tour_steps()[1].commands if is_image_command(c)]
    assert commands, "the tour's step 1 makes no images"
    shell = TourShell(docker_engine, "pfimages", {})
    for command in commands:
        shell.run(command)
    return docker_engine
