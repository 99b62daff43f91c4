"""Backend credentials: ZooKeeper digest auth from the URL or the environment; never in an error
or a log line. (etcd's users and TLS: test_etcd_auth.py, test_etcd_tls.py.)"""

from __future__ import annotations

import uuid

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from pilotfish.catalog import Instance, open_catalog
from pilotfish.catalog.backends.credentials import split_credentials
from pilotfish.config import ConfigError
from tests.fixtures.zookeeper import ZooKeeperServer


def web(instance_id: str, lease: str) -> Instance:
    return Instance(service="web", id=instance_id, address="10.0.0.1", port=80, lease=lease)


async def test_zookeeper_digest_auth_keeps_others_from_writing(
        zookeeper_session_server: ZooKeeperServer) -> None:
    chroot = f"/pilotfish-test/{uuid.uuid4().hex[:10]}"
    url = f"zk://pf:zk-digest-pw@{zookeeper_session_server.hosts}{chroot}"
    catalog = await open_catalog(url)
    outsider = KazooClient(hosts=zookeeper_session_server.hosts)
    outsider.start(timeout=10)
    try:
        lease = await catalog.create_lease(10, "auth")
        assert await catalog.register(web("z1", lease.id))
        assert (await catalog.snapshot()).get("z1") is not None
        paths, checked = [chroot], 0
        while paths:  # every node the catalog made: readable by all, writable by it alone
            path = paths.pop()
            children = outsider.get_children(path)
            paths += [f"{path}/{child}" for child in children]
            if path != chroot:
                checked += 1
                with pytest.raises(NoAuthError):
                    outsider.set(path, b"hijacked")
                with pytest.raises(NoAuthError):
                    outsider.create(f"{path}/intruder", b"{}")
        assert checked >= 3  # the services node, the service's, the instance's (at least)
    finally:
        outsider.stop()
        outsider.close()
        await catalog.close()


def test_credentials_come_from_the_url_or_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PILOTFISH_BACKEND_PASSWORD_FILE", raising=False)
    assert split_credentials("etcd://u:p%40ss@h:1/x") == ("etcd://h:1/x", ("u", "p@ss"))
    assert split_credentials("etcd://h:1/x") == ("etcd://h:1/x", None)
    monkeypatch.setenv("PILOTFISH_BACKEND_PASSWORD", "from-env")
    assert split_credentials("zk://u@h/x") == ("zk://h/x", ("u", "from-env"))
    monkeypatch.delenv("PILOTFISH_BACKEND_PASSWORD")
    with pytest.raises(ConfigError, match="a backend user needs a password"):
        split_credentials("zk://u@h/x")


async def test_errors_about_a_url_do_not_show_its_password() -> None:
    with pytest.raises(ValueError) as caught:
        await open_catalog("etcd://root:sekrit-pw@h1:notaport/x")
    assert "sekrit-pw" not in str(caught.value)
    with pytest.raises(ValueError) as unknown:
        await open_catalog("redis://root:sekrit-pw@h1/?token=abc")
    assert "sekrit-pw" not in str(unknown.value) and "abc" not in str(unknown.value)
