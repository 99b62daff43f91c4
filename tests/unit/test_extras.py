"""A cluster backend whose client is not installed: a clear error naming the extra to install."""

from __future__ import annotations

import sys

import pytest

from pilotfish.config import ConfigError
from pilotfish.registry import open_catalog


@pytest.mark.parametrize(("url", "client", "extra"), [
    ("etcd://127.0.0.1:1/x", "aetcd", "etcd"),
    ("zk://127.0.0.1:1/x", "kazoo", "zookeeper"),
    ("consul://127.0.0.1:1", "consul", "consul"),
])
async def test_a_missing_client_names_its_extra(monkeypatch: pytest.MonkeyPatch, url: str,
                                                client: str, extra: str) -> None:
    for name in list(sys.modules):  # as if neither the backend nor its client was ever imported
        if name.startswith("pilotfish.registry.backends.") or name.split(".")[0] == client:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, client, None)  # `import <client>` now fails
    with pytest.raises(ConfigError) as error:
        await open_catalog(url)
    assert f"pip install 'pilotfish[{extra}]'" in str(error.value)
    assert client in str(error.value)


async def test_the_embedded_backend_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for client in ("aetcd", "kazoo", "consul"):
        monkeypatch.setitem(sys.modules, client, None)
    monkeypatch.delitem(sys.modules, "pilotfish.registry.backends.memory", raising=False)
    catalog = await open_catalog("memory://")
    await catalog.close()
