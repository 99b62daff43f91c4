"""`pilotfish registry --acl FILE` as a process: SIGHUP re-reads the file; secrets never logged."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.fixtures.process import StartPilotfish


def _acl(path: Path, secret: str) -> None:
    path.write_text(f'default_read = false\n[[token]]\nname = "web-team"\nsecret = "{secret}"\n'
                    'scopes = ["read", "write:web"]\n')


def test_sighup_rereads_the_acl_and_no_secret_is_ever_logged(
        pilotfish: StartPilotfish, tmp_path: Path) -> None:
    acl = tmp_path / "acl.toml"
    _acl(acl, "first-secret-value")
    (tmp_path / "token").write_text("token-file-secret\n")
    running = pilotfish("registry", "--api", "127.0.0.1:0", "--acl", str(acl),
                        "--token-file", str(tmp_path / "token"), "--log-level", "debug")

    def status(secret: str) -> int:
        return httpx.get(running.api + "/v1/services", timeout=5,
                         headers={"Authorization": f"Bearer {secret}"}).status_code

    assert status("first-secret-value") == 200
    assert status("token-file-secret") == 200  # --token-file: one admin token beside the ACL
    assert status("second-secret-value") == 401
    _acl(acl, "second-secret-value")
    running.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while status("second-secret-value") != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status("second-secret-value") == 200
    assert status("first-secret-value") == 401
    acl.write_text('[[token]]\nname = "x"\nsecret = "third-secret-value"\nscopes = ["root"]\n')
    running.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not any("ACL not reloaded" in line for line in running.lines):
        assert time.monotonic() < deadline, running.lines
        time.sleep(0.05)
    assert status("second-secret-value") == 200  # a broken file keeps the old ACL
    assert running.stop() == 0
    log = "".join(running.lines)
    assert "ACL reloaded" in log and "unknown scope 'root'" in log
    for secret in ("first-secret-value", "second-secret-value", "third-secret-value",
                   "token-file-secret"):
        assert secret not in log
