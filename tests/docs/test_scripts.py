"""The scripts install what they use: run with fake `dpkg-query` (nothing installed), `apt-get`
(records what it is asked for) and a `docker` that finds no engine, each asks apt-get for its
packages before it needs them, then says how to start a Docker engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.docs.pages import REPO

FAKES = {
    "dpkg-query": "exit 1",  # nothing is installed
    "apt-get": 'echo "$*" >> "$APT_LOG"',
    "docker": "echo 'Cannot connect to the Docker daemon' >&2; exit 1",
}


def run_with_fakes(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run scripts/<script> with the fakes first on PATH; its result and apt-get's requests."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        fake = bin_dir / name
        fake.write_text(f"#!/bin/sh\n{body}\n")
        fake.chmod(0o755)
    log = tmp_path / "apt.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "APT_LOG": str(log),
           "PILOTFISH_CACHE": str(tmp_path / "cache"), "DOCKER_HOST": "unix:///nonexistent"}
    result = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True,
                            env=env, timeout=60)
    return result, log.read_text() if log.exists() else ""


def installed(apt_log: str) -> set[str]:
    """The packages `apt-get install` was asked for."""
    return {word for line in apt_log.splitlines() if line.startswith("install ")
            for word in line.split()[1:] if not word.startswith("-")}


def test_build_image_installs_debootstrap_and_wants_an_engine(tmp_path: Path) -> None:
    result, apt = run_with_fakes("build-image", tmp_path)
    assert "debootstrap" in installed(apt), (apt, result.stderr)
    assert result.returncode == 1
    assert "build-image: no Docker engine answers" in result.stderr


def test_demo_images_installs_what_it_uses_and_says_how_to_start_docker(tmp_path: Path) -> None:
    result, apt = run_with_fakes("demo-images", tmp_path)
    assert {"busybox-static", "etcd-server", "etcd-client"} <= installed(apt), apt
    assert result.returncode == 1
    assert "no Docker engine answers at unix:///nonexistent" in result.stderr
    assert "dockerd --iptables=false --ip6tables=false --bridge=none" in result.stderr
    assert "systemctl start docker" in result.stderr
