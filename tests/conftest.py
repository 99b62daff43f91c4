"""Fixtures shared by every test folder: backend URLs (each from its own plugin) and processes."""

import asyncio
from collections.abc import Callable

import pytest
import uvloop

pytest_plugins = [
    "tests.fixtures.backends",
    "tests.fixtures.process",
    "tests.fixtures.etcd",
    "tests.fixtures.http",
    "tests.fixtures.consul",
    "tests.fixtures.zookeeper",
    "tests.fixtures.docker",
]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, the loop pilotfish itself runs on."""
    return {"uvloop": uvloop.new_event_loop}
