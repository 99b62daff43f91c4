"""Host lists in registry URLs, shared by etcd:// and zk://."""

from __future__ import annotations

import pytest

from pilotfish.config import ConfigError, HostPort, parse_endpoints


def test_ports_default_and_ipv6_keep_theirs() -> None:
    assert parse_endpoints("a,b:2182,[::1],[::2]:7", 2181, "zk") == [
        HostPort("a", 2181), HostPort("b", 2182), HostPort("::1", 2181), HostPort("::2", 7)]


@pytest.mark.parametrize("netloc", ["", ",", "h:0", "h:99999", ":2181", "h:port"])
def test_bad_host_lists_are_refused(netloc: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoints(netloc, 2181, "zk")
