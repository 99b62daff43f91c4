"""The OpenAPI schema tells the truth: schemathesis runs every check against a real registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.process import StartPilotfish

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 50  # per operation and phase; with a fixed seed the run is the same every time
# Stateful scenarios long enough to reach what a registration links to (the check reports on
# its first check: seven operations behind one PUT); schemathesis' default stops at 6 steps.
STATEFUL = "[phases.stateful]\nmax-steps = 20\n"


def test_schemathesis_finds_nothing_with_every_check(
    pilotfish: StartPilotfish, tmp_path: Path
) -> None:
    running = pilotfish("registry", "--api", "127.0.0.1:0")
    (tmp_path / "schemathesis.toml").write_text(STATEFUL)  # read from its cwd
    started = time.monotonic()
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run",
         f"{running.api}/v1/openapi.json", "--checks", "all", "--max-examples", str(EXAMPLES),
         "--seed", "20261126", "--request-timeout", "10", "--workers", "1", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,  # its caches stay there
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks"},
    )
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: {run.stdout.strip().splitlines()[-1]} ({elapsed:.0f} s)")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout
