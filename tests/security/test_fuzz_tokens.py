"""Schemathesis against an ACL'd registry, once per kind of caller: no 5xx, and every answer is
one the schema documents (401/403 included) whatever token the fuzzer holds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.process import StartPilotfish

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 6  # per operation and phase: a smaller run than tests/e2e's, repeated per caller
ACL = """default_read = false
[[token]]
name = "ops"
secret = "fuzz-admin-secret"
scopes = ["admin"]
[[token]]
name = "web-team"
secret = "fuzz-web-secret"
scopes = ["read", "write:web*"]
[[token]]
name = "reader"
secret = "fuzz-read-secret"
scopes = ["read"]
"""
CALLERS = {"admin": "fuzz-admin-secret", "in-scope": "fuzz-web-secret",
           "out-of-scope": "fuzz-read-secret", "unknown": "not-a-token", "none": None}
# Positive-data acceptance would call a 401/403 for valid data a failure: that is the point here.
METHODS = {"GET", "PUT", "POST", "DELETE"}
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")
# Stateful scenarios long enough to reach what a registration links to (the check reports on
# its first check: seven operations behind one PUT); schemathesis' default stops at 6 steps,
# and with 6 examples per operation these runs need longer scenarios than test_openapi's.
STATEFUL = "[phases.stateful]\nmax-steps = 50\n"


@pytest.mark.parametrize("caller", list(CALLERS))
def test_schemathesis_with_each_kind_of_token(pilotfish: StartPilotfish, tmp_path: Path,
                                              caller: str) -> None:
    (tmp_path / "acl.toml").write_text(ACL)
    (tmp_path / "schemathesis.toml").write_text(STATEFUL)  # read from its cwd
    running = pilotfish("registry", "--api", "127.0.0.1:0", "--acl", str(tmp_path / "acl.toml"))
    secret = CALLERS[caller]
    header = ["-H", f"Authorization: Bearer {secret}"] if secret else []
    started = time.monotonic()
    run = subprocess.run(
        [str(Path(sys.executable).with_name("schemathesis")), "run",
         f"{running.api}/v1/openapi.json", "--checks", CHECKS, *header,
         "--max-examples", str(EXAMPLES), "--seed", "20261126", "--request-timeout", "10",
         "--workers", "1", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT),
             "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks"},
    )
    print(f"\nschemathesis as {caller}: {run.stdout.strip().splitlines()[-1]} "
          f"({time.monotonic() - started:.0f} s)")
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "failed" not in run.stdout.rpartition("Test cases:")[2].split("\n\n")[0]
    refused_only = {line.strip()[2:] for line in run.stdout.splitlines()
                    if line.startswith("  - ") and line.strip()[2:].split(" ")[0] in METHODS}
    # what the fuzzer could never get past the ACL, checked against the matrix
    if caller in ("none", "unknown"):  # every operation but /v1/health
        total = int(re.search(r"Operations:\s+\d+ selected / (\d+) total", run.stdout)[1])
        assert f"{total - 1} operations returned only 401/403" in run.stdout, run.stdout[-3000:]
    elif caller == "admin":
        assert not refused_only and "No issues found" in run.stdout, run.stdout[-3000:]
    else:  # reads always pass; of the writes, those outside the token's scope never do
        assert refused_only, run.stdout[-3000:]
        assert not {op for op in refused_only if op.startswith("GET ")}, refused_only
        assert ("POST /v1/leases" in refused_only) == (caller == "out-of-scope"), refused_only
    log = "".join(running.lines)
    for token in CALLERS.values():
        assert token is None or token not in log
