"""What Prometheus's consul_sd_configs discovers from pilotfish (see prometheus_sd.py for why this
is Prometheus's SD code transcribed, not Debian's Prometheus binary)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.consulapi.conftest import Registry
from tests.consulapi.prometheus_sd import ConsulSD, DecodeError, go_decode

Targets = dict[str, dict[str, str]]


@pytest.fixture
async def sd(registry: Registry) -> AsyncIterator[ConsulSD]:
    discovery = ConsulSD(registry.process.api, refresh=0.2)
    await discovery.start()
    try:
        yield discovery
    finally:
        await discovery.stop()


async def _wait_for(sd: ConsulSD, check: Callable[[Targets], bool], what: str,
                    timeout: float = 10.0) -> Targets:
    deadline = time.monotonic() + timeout
    while not check(sd.targets):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{what} not seen within {timeout}s: {sd.targets} {sd.errors}"
        sd.changed.clear()
        try:
            await asyncio.wait_for(sd.changed.wait(), remaining)
        except TimeoutError:
            pass
    return sd.targets


async def test_discovers_exactly_the_registered_instances_and_follows_changes(
        registry: Registry, sd: ConsulSD, name: str) -> None:
    web, db, cache = name, f"{name}-db", f"{name}-cache"
    registry.register(web, f"{web}-1", "127.0.0.31", 8080, tags=["prod", "v1"],
                      meta={"env": "qa", "team-name": "a"})
    lease = registry.lease("sidecar-host-a")
    registry.register(web, f"{web}-2", "127.0.0.32", 8081, lease=lease, health="warning")
    registry.register(db, f"{db}-1", "127.0.0.33", 5432)
    mine = {web, db, cache}

    def ours(targets: Targets) -> set[str]:
        return {i for i, t in targets.items() if t["__meta_consul_service"] in mine}

    targets = await _wait_for(sd, lambda t: ours(t) == {f"{web}-1", f"{web}-2", f"{db}-1"},
                              "the three registered instances")
    one = targets[f"{web}-1"]
    assert one["__address__"] == "127.0.0.31:8080"
    assert one["__meta_consul_service"] == web
    assert one["__meta_consul_tags"] == ",prod,v1,"
    assert one["__meta_consul_service_metadata_env"] == "qa"
    assert one["__meta_consul_service_metadata_team_name"] == "a"
    assert one["__meta_consul_dc"] == "dc1"  # learnt from /v1/agent/self
    assert one["__meta_consul_health"] == "passing"
    assert one["__meta_consul_node"] == "127-0-0-31"
    assert one["__meta_consul_tagged_address_lan"] == "127.0.0.31"
    two = targets[f"{web}-2"]
    assert two["__meta_consul_health"] == "warning"
    assert two["__meta_consul_node"] == "sidecar-host-a-127-0-0-32"
    assert two["__meta_consul_metadata_pilotfish_owner"] == "sidecar-host-a"
    assert two["__meta_consul_tags"] == ",,"

    registry.register(web, f"{web}-3", "127.0.0.34", 8082, tags=["canary"])
    registry.register(cache, f"{cache}-1", "127.0.0.35", 6379)  # a service new to Prometheus
    targets = await _wait_for(
        sd, lambda t: ours(t) == {f"{web}-1", f"{web}-2", f"{web}-3", f"{db}-1", f"{cache}-1"},
        "a registration")
    assert targets[f"{web}-3"]["__meta_consul_tags"] == ",canary,"

    registry.deregister(web, f"{web}-1")
    registry.deregister(db, f"{db}-1")  # the last instance: the service leaves the catalog
    await _wait_for(sd, lambda t: ours(t) == {f"{web}-2", f"{web}-3", f"{cache}-1"},
                    "a deregistration")
    assert sd.errors == []


def test_the_go_type_check_catches_what_go_would_refuse() -> None:
    go_decode({"Node": {"TaggedAddresses": {"lan": "10.0.0.1"}}}, {"Node": {
        "TaggedAddresses": {"*": "string"}}})
    with pytest.raises(DecodeError, match="Go string"):
        go_decode({"Node": {"TaggedAddresses": {"lan": {"Address": "10.0.0.1"}}}},
                  {"Node": {"TaggedAddresses": {"*": "string"}}})
    with pytest.raises(DecodeError, match="Go int"):
        go_decode({"Port": "80"}, {"Port": "int"})


def test_debians_prometheus_has_no_consul_sd() -> None:
    """Why the SD is transcribed: this fails the day Debian ships a Prometheus that has it.

    Then test_discovers_... should run Prometheus itself with consul_sd_configs.
    """
    with tempfile.TemporaryDirectory(prefix="pf-prometheus-") as work:
        config = Path(work) / "prometheus.yml"
        config.write_text("scrape_configs:\n  - job_name: pf\n    consul_sd_configs:\n"
                          "      - server: 127.0.0.1:8500\n")
        check = subprocess.run(["promtool", "check", "config", str(config)],
                               capture_output=True, text=True, timeout=30)
    assert check.returncode != 0
    assert "field consul_sd_configs not found" in check.stdout + check.stderr
