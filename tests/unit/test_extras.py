"""A cluster backend whose client is not installed: a clear error naming the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pilotfish.catalog import open_catalog
from pilotfish.config import ConfigError

MISSING = [  # (url, the module that is missing, the client, its extra)
    ("etcd://127.0.0.1:1/x", "aetcd", "aetcd", "etcd"),
    ("etcd://127.0.0.1:1/x", "grpc", "aetcd", "etcd"),  # what the client (and backend) import
    ("etcds://127.0.0.1:1/x", "google", "aetcd", "etcd"),  # protobuf
    ("zk://127.0.0.1:1/x", "kazoo", "kazoo", "zookeeper"),
    ("consul://127.0.0.1:1", "consul", "consul", "consul"),
]


@pytest.mark.parametrize(("url", "missing", "client", "extra"), MISSING)
async def test_a_missing_client_names_its_extra(monkeypatch: pytest.MonkeyPatch, url: str,
                                                missing: str, client: str, extra: str) -> None:
    for name in list(sys.modules):  # as if neither the backend nor its client was ever imported
        if (name.startswith("pilotfish.catalog.backends.")
                or name.split(".")[0] in (client, missing)):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # `import <missing>` now fails
    with pytest.raises(ConfigError) as error:
        await open_catalog(url)
    assert f"pip install 'pilotfish[{extra}]'" in str(error.value)
    assert client in str(error.value) and missing in str(error.value)


@pytest.mark.parametrize(("url", "missing", "client", "extra"), MISSING)
def test_pilotfish_up_says_which_extra_without_a_traceback(url: str, missing: str, client: str,
                                                          extra: str) -> None:
    """What a new user sees: `pilotfish up --registry URL` where the module is not installed."""
    blocked = f"import sys; sys.modules[{missing!r}] = None; "
    result = subprocess.run(
        [sys.executable, "-c", blocked + "from pilotfish.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "up", "--registry", url, "--api", "127.0.0.1:0",
         "--dns", "off"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"pip install 'pilotfish[{extra}]'" in result.stderr


async def test_the_embedded_backend_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for client in ("aetcd", "kazoo", "consul"):
        monkeypatch.setitem(sys.modules, client, None)
    monkeypatch.delitem(sys.modules, "pilotfish.catalog.backends.memory", raising=False)
    catalog = await open_catalog("memory://")
    await catalog.close()
