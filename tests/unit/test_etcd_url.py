"""etcd:// URL parsing: endpoints (IPv4, IPv6, default port), prefix, and mistakes."""

from __future__ import annotations

import pytest

from pilotfish.catalog.backends.etcd import parse_url


def test_many_endpoints_and_a_prefix() -> None:
    endpoints, prefix, query = parse_url("etcd://10.0.0.1:2379,10.0.0.2:12379/prod/registry")
    assert endpoints == [("10.0.0.1", 2379), ("10.0.0.2", 12379)]
    assert prefix == "prod/registry"
    assert query == {}


def test_defaults_and_ipv6() -> None:
    endpoints, prefix, _ = parse_url("etcd://[::1]:2380,etcd-1")
    assert endpoints == [("[::1]", 2380), ("etcd-1", 2379)]
    assert prefix == "pilotfish"


def test_options() -> None:
    _, _, query = parse_url("etcd://127.0.0.1:2379/p?timeout=0.5")
    assert query == {"timeout": ["0.5"]}


@pytest.mark.parametrize("url", ["etcd:///prefix", "etcd://h:99999/p", "etcd://h:2379/a//b",
                                 "zk://h:2181/p"])
def test_mistakes_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)
