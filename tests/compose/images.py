"""The images the compose stacks name, made on an engine with no image registry.

pilotfish comes from scripts/build-image (the offline build users run too); etcd is Debian's
etcd and etcdctl with the C library they link, imported under the official image's name;
busybox is the busybox-static image of tests/fixtures/docker.py with every applet linked, under
the official name. Which names to give them is read from the compose files themselves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.compose.stack import COMPOSE_DIR, REPO, images_named
from tests.fixtures.docker import DockerEngine

ETCD_BINARIES = ("/usr/bin/etcd", "/usr/bin/etcdctl")


def build_pilotfish(engine: DockerEngine, tag: str) -> None:
    """scripts/build-image against the test engine, wheels from this interpreter's pip."""
    result = subprocess.run(
        [str(REPO / "scripts" / "build-image"), tag], cwd=REPO, capture_output=True, text=True,
        env={**engine.env, "PYTHON": sys.executable}, timeout=900,
    )
    assert result.returncode == 0, f"build-image failed:\n{result.stdout}\n{result.stderr}"


def _libraries(binary: str) -> set[Path]:
    """The shared objects a binary loads (ldd), the dynamic loader included."""
    output = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in output.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            found.add(Path(path))
    return found


def import_etcd(engine: DockerEngine, tag: str) -> None:
    """Debian's etcd and etcdctl in /usr/local/bin (as in the official image), via import."""
    root = Path(tempfile.mkdtemp(prefix="pf-etcd-image-"))
    try:
        (root / "usr" / "local" / "bin").mkdir(parents=True)
        (root / "tmp").mkdir(mode=0o1777)
        libraries: set[Path] = set()
        for binary in ETCD_BINARIES:
            shutil.copy2(binary, root / "usr" / "local" / "bin" / os.path.basename(binary))
            libraries |= _libraries(binary)
        for library in libraries:
            target = root / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(library.resolve(), target)
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True,
                             check=True).stdout
        engine.docker("import", "--change", "ENV PATH=/usr/local/bin:/usr/bin:/bin", "-", tag,
                      input=tar)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def tag_busybox(engine: DockerEngine, tag: str) -> None:
    """The fixture's busybox image with every applet linked, as the official image has."""
    dockerfile = f"FROM {engine.import_busybox()}\nRUN busybox --install -s /bin\n"
    engine.docker("build", "-q", "--network", "none", "-t", tag, "-",
                  input=dockerfile.encode(), timeout=120)


def make_images(engine: DockerEngine, stacks: tuple[str, ...]) -> None:
    """Every image the given stacks name, or fail saying which one this test cannot make."""
    for image in sorted(set().union(*(images_named(COMPOSE_DIR / f"{s}.yml") for s in stacks))):
        name = image.rpartition("/")[2].partition(":")[0]
        if name == "pilotfish":
            build_pilotfish(engine, image)
        elif name == "etcd":
            import_etcd(engine, image)
        elif name == "busybox":
            tag_busybox(engine, image)
        else:
            raise AssertionError(f"no local way to make {image}")
