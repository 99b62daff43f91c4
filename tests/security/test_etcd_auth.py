"""etcd with authentication on: pilotfish signs in as a user whose role covers its prefix, renews
a token that lapsed (etcd's --auth-token-ttl) without dropping its watch or its lease, refuses
to start with a wrong password, and nobody without a user reads the keys."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from aetcd import rpc

from pilotfish.catalog import BackendUnavailable, Instance, open_catalog
from pilotfish.catalog.backends.etcd import EtcdCatalog
from pilotfish.config import ConfigError
from tests.fixtures.etcd_secure import EtcdUser, SecureEtcd
from tests.fixtures.process import StartPilotfish
from tests.fixtures.watching import ids, seen_through_the_watch, wait_until

TOKEN_TTL = 2  # seconds an unused etcd token lives
PASSWORD = "pf-etcd-pw"
ROOT_PASSWORD = "root-etcd-pw"
PREFIX = "pf-auth"  # the pilotfish user's role covers /pf-auth/


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[SecureEtcd]:
    """An etcd with auth on: root, `pf` (readwrite on /pf-auth/), `reader` (read on it) and
    `norole` (nothing)."""
    with SecureEtcd(token_ttl=TOKEN_TTL) as server:
        server.enable_auth(ROOT_PASSWORD, [EtcdUser("pf", PASSWORD, PREFIX),
                                           EtcdUser("reader", "reader-pw", PREFIX, "read"),
                                           EtcdUser("norole", "norole-pw")])
        yield server


def prefix() -> str:
    return f"{PREFIX}/{uuid.uuid4().hex[:8]}"


def web(instance_id: str, lease: str) -> Instance:
    return Instance(service="web", id=instance_id, address="10.0.0.1", port=80, lease=lease)


def sign_ins(catalog: object) -> int:
    assert isinstance(catalog, EtcdCatalog)
    return sum(member.authentications for member in catalog._members)


async def test_a_user_registers_watches_and_keeps_alive(auth_etcd: SecureEtcd) -> None:
    url = auth_etcd.url(prefix(), f"pf:{PASSWORD}")
    writer = await open_catalog(url)
    reader = await open_catalog(url)
    try:
        lease_id = await seen_through_the_watch(writer, reader, "a1")
        assert (await reader.lease(lease_id)) is not None
        assert await writer.deregister("a1") is not None
        await wait_until(reader, lambda s: ids(s, "web") == set(), 5)
        assert sign_ins(writer) == 1 and sign_ins(reader) == 1  # one token each, kept in use
    finally:
        await writer.close()
        await reader.close()


async def test_a_read_only_user_follows_and_cannot_write(auth_etcd: SecureEtcd) -> None:
    where = prefix()
    writer = await open_catalog(auth_etcd.url(where, f"pf:{PASSWORD}"))
    reader = await open_catalog(auth_etcd.url(where, "reader:reader-pw"))  # a DNS or LB host
    try:
        lease = await writer.create_lease(10, "auth-test")
        assert await writer.register(web("ro1", lease.id))
        await wait_until(reader, lambda s: ids(s, "web") == {"ro1"}, 5)
        with pytest.raises(BackendUnavailable, match="user 'reader' may not read and write"):
            await reader.create_lease(10, "reader")
        with pytest.raises(BackendUnavailable, match="user 'reader' may not read and write"):
            await reader.register(web("ro2", lease.id))
        assert ids(await writer.snapshot(), "web") == {"ro1"}
    finally:
        await writer.close()
        await reader.close()


async def test_a_password_changed_under_a_running_process_is_named(
        auth_etcd: SecureEtcd) -> None:
    catalog = await open_catalog(auth_etcd.url(prefix(), f"pf:{PASSWORD}"))
    root = f"root:{ROOT_PASSWORD}"
    try:
        lease = await catalog.create_lease(10, "auth-test")
        assert auth_etcd.etcdctl("user", "passwd", "pf", "--interactive=false",
                                 user=root, stdin="changed-pw\n").returncode == 0
        # etcd drops the user's tokens: signing in again with the old password fails
        with pytest.raises(BackendUnavailable, match="user 'pf' could not sign in") as refused:
            await catalog.keepalive(lease.id)
        assert PASSWORD not in str(refused.value) and "changed-pw" not in str(refused.value)
    finally:
        assert auth_etcd.etcdctl("user", "passwd", "pf", "--interactive=false",
                                 user=root, stdin=PASSWORD + "\n").returncode == 0
        await catalog.close()


async def test_a_lapsed_token_is_renewed_without_losing_the_watch_or_the_lease(
        auth_etcd: SecureEtcd, caplog: pytest.LogCaptureFixture) -> None:
    url = auth_etcd.url(prefix(), f"pf:{PASSWORD}")
    writer = await open_catalog(url)
    reader = await open_catalog(url)
    try:
        lease = await writer.create_lease(15, "auth-test")
        assert await writer.register(web("t1", lease.id))
        await wait_until(reader, lambda s: ids(s, "web") == {"t1"}, 5)
        caplog.clear()
        # The whole process stalls (an overloaded host) for longer than a token lives:
        # etcd forgets both catalogs' tokens (it checks once a second).
        time.sleep(TOKEN_TTL + 1.6)  # noqa: ASYNC251 - the loop itself must stall
        with caplog.at_level(logging.INFO, logger="pilotfish.catalog.backends.etcd"):
            renewed = await writer.keepalive(lease.id)  # the same lease, not a new one
            assert renewed.id == lease.id and renewed.ttl == 15
            assert await writer.register(web("t2", lease.id))
            seen = await wait_until(reader, lambda s: ids(s, "web") == {"t1", "t2"}, 5)
            assert seen.get("t1") is not None  # served all along
            await asyncio.sleep(0.6)  # a few watch checks, each with the reader's new token
            assert await reader.healthy() and await writer.healthy()
        assert sign_ins(writer) >= 2 and sign_ins(reader) >= 2, "no token was renewed"
        messages = [record.getMessage() for record in caplog.records]
        assert any("signed in again as 'pf'" in m for m in messages), messages
        assert not any("watch lost" in m for m in messages), messages
        assert PASSWORD not in caplog.text
    finally:
        await writer.close()
        await reader.close()


async def test_a_wrong_password_or_no_user_fails_at_start_clearly(auth_etcd: SecureEtcd) -> None:
    wrong = auth_etcd.url(prefix(), "pf:not-the-password")
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        await open_catalog(wrong)
    assert time.monotonic() - started < 2.5  # at once, not after the start's wait
    assert "user 'pf' could not sign in: wrong user name or password" in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    with pytest.raises(ConfigError, match="etcd requires a user: give etcd://USER:PASSWORD@"):
        await open_catalog(auth_etcd.url(prefix()))
    with pytest.raises(ConfigError, match="user 'norole' may not read and write /pf-auth/"):
        await open_catalog(auth_etcd.url(prefix(), "norole:norole-pw"))


def test_the_command_line_exits_2_on_a_wrong_password(auth_etcd: SecureEtcd) -> None:
    url = auth_etcd.url(prefix(), "pf:cli-wrong-pw")
    done = subprocess.run([sys.executable, "-m", "pilotfish", "registry", "--registry", url],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "pilotfish: etcd" in done.stderr and "could not sign in" in done.stderr
    assert "Traceback" not in done.stderr and "cli-wrong-pw" not in done.stderr


async def test_without_a_user_nobody_reads_the_keys(auth_etcd: SecureEtcd) -> None:
    where = prefix()
    catalog = await open_catalog(auth_etcd.url(where, f"pf:{PASSWORD}"))
    try:
        lease = await catalog.create_lease(10, "auth-test")
        assert await catalog.register(web("r1", lease.id))
        key = f"/{where}/services/web/r1".encode()
        channel = grpc.aio.insecure_channel(auth_etcd.members[0].endpoint)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key), timeout=5)
            assert "user name is empty" in (anonymous.value.details() or "")
            signed = await rpc.AuthStub(channel).Authenticate(
                rpc.AuthenticateRequest(name="norole", password="norole-pw"), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as outsider:
                await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key), timeout=5,
                                                metadata=(("token", signed.token),))
            assert outsider.value.code() == grpc.StatusCode.PERMISSION_DENIED
            signed = await rpc.AuthStub(channel).Authenticate(
                rpc.AuthenticateRequest(name="pf", password=PASSWORD), timeout=5)
            found = await rpc.KVStub(channel).Range(rpc.RangeRequest(key=key), timeout=5,
                                                    metadata=(("token", signed.token),))
            assert json.loads(found.kvs[0].value)["id"] == "r1"  # the key is there
        finally:
            await channel.close()
        assert "user name is empty" in gateway_read(auth_etcd.members[0].endpoint, key)
    finally:
        await catalog.close()


def gateway_read(endpoint: str, key: bytes) -> str:
    """What etcd's HTTP gateway answers an anonymous read of `key` (any status)."""
    request = urllib.request.Request(
        f"http://{endpoint}/v3/kv/range", method="POST",
        data=json.dumps({"key": base64.b64encode(key).decode()}).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            body = answer.read().decode()
    except urllib.error.HTTPError as refused:
        body = refused.read().decode()
    assert "kvs" not in body, body
    return body


async def test_tokens_lost_in_an_etcd_restart_are_renewed(auth_etcd: SecureEtcd) -> None:
    catalog = await open_catalog(auth_etcd.url(prefix(), f"pf:{PASSWORD}"))
    try:
        lease = await catalog.create_lease(15, "auth-test")
        assert await catalog.register(web("s1", lease.id))
        auth_etcd.restart()  # simple tokens live in the member's memory only
        deadline = time.monotonic() + 10
        while True:
            try:
                renewed = await catalog.keepalive(lease.id)
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert renewed.id == lease.id
        assert await catalog.register(web("s2", lease.id))
        await wait_until(catalog, lambda s: ids(s, "web") == {"s1", "s2"}, 10)
        assert sign_ins(catalog) >= 2
    finally:
        await catalog.close()


async def test_a_user_for_an_etcd_without_authentication_is_warned_about(
        etcd_url: str, caplog: pytest.LogCaptureFixture) -> None:
    url = etcd_url.replace("etcd://", f"etcd://pf:{PASSWORD}@")
    with caplog.at_level(logging.WARNING, logger="pilotfish.catalog.backends.etcd"):
        catalog = await open_catalog(url)
    try:
        lease = await catalog.create_lease(10, "auth-test")
        assert await catalog.register(web("n1", lease.id))
        await wait_until(catalog, lambda s: ids(s, "web") == {"n1"}, 5)
        assert "has authentication disabled: user 'pf' is not needed there" in caplog.text
        assert PASSWORD not in caplog.text
    finally:
        await catalog.close()


def test_a_registry_process_takes_the_password_from_a_file(
        auth_etcd: SecureEtcd, pilotfish: StartPilotfish, tmp_path: Path) -> None:
    (tmp_path / "etcd-password").write_text(PASSWORD + "\n")
    running = pilotfish("registry", "--api", "127.0.0.1:0", "--log-level", "debug",
                        "--registry", auth_etcd.url(prefix(), "pf"),
                        env={"PILOTFISH_BACKEND_PASSWORD_FILE": str(tmp_path / "etcd-password")})
    put = httpx.put(running.api + "/v1/services/web/instances/p1", timeout=5,
                    json={"address": "127.0.0.1", "port": 8080, "ttl": 10})
    assert put.status_code in (200, 201), put.text
    found = httpx.get(running.api + "/v1/services/web", timeout=5).json()
    assert [i["id"] for i in found["instances"]] == ["p1"]
    assert running.stop() == 0
    assert PASSWORD not in "".join(running.lines)
