"""Clients of an ACL'd registry API: tokens from ?token=, --token-file, PILOTFISH_TOKEN; errors
that name the token and the scope, never the secret."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from pilotfish.catalog import Instance, open_catalog
from pilotfish.catalog.backends.http import Unauthorized
from pilotfish.catalog.redact import redact_url
from tests.fixtures.process import StartPilotfish

WEB_SECRET = "web-team-secret"
DB_SECRET = "db-team-secret"
ACL = f"""default_read = false
[[token]]
name = "web-team"
secret = "{WEB_SECRET}"
scopes = ["read", "write:web"]
[[token]]
name = "db-team"
secret = "{DB_SECRET}"
scopes = ["read", "write:db"]
"""


@pytest.fixture
def acl_api(pilotfish: StartPilotfish, tmp_path: Path) -> str:
    (tmp_path / "acl.toml").write_text(ACL)
    return pilotfish("registry", "--registry", "memory://", "--api", "127.0.0.1:0",
                     "--acl", str(tmp_path / "acl.toml")).api


def web(instance_id: str, lease: str) -> Instance:
    return Instance(service="web", id=instance_id, address="10.0.0.1", port=80, lease=lease)


async def test_the_token_comes_from_the_url_a_file_or_the_environment(
        acl_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PILOTFISH_TOKEN", raising=False)
    (tmp_path / "web-token").write_text(WEB_SECRET + "\n")
    from_url = await open_catalog(f"{acl_api}?token={WEB_SECRET}")
    from_file = await open_catalog(acl_api, token_file=str(tmp_path / "web-token"))
    monkeypatch.setenv("PILOTFISH_TOKEN", WEB_SECRET)
    from_env = await open_catalog(acl_api)
    try:
        for number, catalog in enumerate((from_url, from_file, from_env)):
            lease = await catalog.create_lease(10, "ci")
            assert await catalog.register(web(f"w{number}", lease.id))
            assert (await catalog.keepalive(lease.id)).id == lease.id
            deadline = time.monotonic() + 5  # reads too: default_read is off
            while (await catalog.snapshot()).get(f"w{number}") is None:
                assert time.monotonic() < deadline
                await catalog.changes.wait(0.5)
    finally:
        for catalog in (from_url, from_file, from_env):
            await catalog.close()


async def test_refusals_name_the_token_and_scope_never_the_secret(
        acl_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PILOTFISH_TOKEN", raising=False)
    (tmp_path / "db-token").write_text(DB_SECRET + "\n")
    db = await open_catalog(acl_api, token_file=str(tmp_path / "db-token"))
    anonymous = await open_catalog(acl_api)
    monkeypatch.setenv("PILOTFISH_TOKEN", "not-a-known-secret")
    unknown = await open_catalog(acl_api)
    web_team = await open_catalog(f"{acl_api}?token={WEB_SECRET}")
    try:
        lease = await db.create_lease(10)
        with pytest.raises(Unauthorized) as out_of_scope:
            await db.register(web("w", lease.id))
        message = str(out_of_scope.value)
        assert "token 'db-team'" in message and "lacks scope 'write:web'" in message
        assert f"token from --token-file {tmp_path / 'db-token'}" in message
        with pytest.raises(Unauthorized) as not_its_lease:
            await web_team.keepalive(lease.id)
        assert "token 'web-team'" in str(not_its_lease.value)
        assert "lacks scope 'admin'" in str(not_its_lease.value)
        with pytest.raises(Unauthorized) as no_token:
            await anonymous.create_lease(10)
        assert "no token given" in str(no_token.value) and "PILOTFISH_TOKEN" in str(no_token.value)
        with pytest.raises(Unauthorized) as wrong:
            await unknown.create_lease(10)
        assert "refused the token from PILOTFISH_TOKEN: unknown token" in str(wrong.value)
        for refusal in (out_of_scope, not_its_lease, no_token, wrong):
            for secret in (WEB_SECRET, DB_SECRET, "not-a-known-secret"):
                assert secret not in str(refusal.value)
    finally:
        for catalog in (db, anonymous, unknown, web_team):
            await catalog.close()


def test_pilotfish_register_takes_a_token_file_and_logs_no_secret(
        acl_api: str, pilotfish: StartPilotfish, tmp_path: Path) -> None:
    (tmp_path / "web-token").write_text(WEB_SECRET + "\n")
    (tmp_path / "db-token").write_text(DB_SECRET + "\n")
    allowed = pilotfish("register", "--registry", acl_api, "--token-file",
                        str(tmp_path / "web-token"), "web/reg-1=127.0.0.1:8080", expect=())
    refused = pilotfish("register", "--registry", f"{acl_api}?token={DB_SECRET}",
                        "web/reg-2=127.0.0.1:8081", expect=())
    headers = {"Authorization": f"Bearer {WEB_SECRET}"}
    deadline = time.monotonic() + 10
    while True:
        ids = [i["id"] for i in httpx.get(acl_api + "/v1/services/web", headers=headers,
                                          timeout=5).json()["instances"]]
        if ids == ["reg-1"]:
            break
        assert time.monotonic() < deadline, ids
        time.sleep(0.1)
    assert refused.process.wait(10) == 2  # a refused token is a clear error, not a retry loop
    while "pilotfish: registry API" not in "".join(refused.lines):  # the reader thread's last
        assert time.monotonic() < deadline + 10, refused.lines       # lines may lag the exit
        time.sleep(0.05)
    refusal = "".join(refused.lines)
    assert "pilotfish: registry API" in refusal and "Traceback" not in refusal
    assert "token 'db-team' lacks scope 'write:web'" in refusal
    assert "[token from ?token= in the registry URL]" in refusal
    assert allowed.stop() == 0
    for running in (allowed, refused):
        log = "".join(running.lines)
        assert WEB_SECRET not in log and DB_SECRET not in log, log


def test_registry_urls_are_shown_without_credentials() -> None:
    assert redact_url("http://api:8500/?token=s3cret") == "http://api:8500/?token=***"
    assert redact_url("etcd://user:pw@h1:2379,h2:2379/pf?x=1") == "etcd://user:***@h1:2379,h2:2379/pf?x=1"
    assert redact_url("zk://h:2181/chroot") == "zk://h:2181/chroot"
