"""Fixtures shared by every test folder: backend URLs (each from its own plugin) and processes."""

pytest_plugins = [
    "tests.fixtures.backends",
    "tests.fixtures.process",
    "tests.fixtures.etcd",
    "tests.fixtures.http",
    "tests.fixtures.consul",
    "tests.fixtures.zookeeper",
]
