"""The expiry bookkeeping readers share: the etcd cache's rebuild on a renewal that arrives
after the old expiry passed, `Freshness` freezing expiry while the backend proves nothing
(docs/architecture.md guarantees 1 and 3), and the smallest TTL a ZooKeeper session timeout
honours. Only the last test needs a server (the session's ZooKeeper)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from pilotfish.catalog import open_catalog
from pilotfish.catalog.backends.etcd import EtcdCatalog, keepalive_timeout
from pilotfish.catalog.backends.zookeeper import min_ttl
from pilotfish.catalog.expiry import ExpiringSnapshots, Freshness
from pilotfish.catalog.interface import ChangeSignal
from pilotfish.catalog.model import InvalidField
from tests.fixtures.watching import instance


def _fed_etcd_cache() -> EtcdCatalog:
    """An etcd catalog whose cache is fed by hand, as its watch would (no server)."""
    catalog = EtcdCatalog([("127.0.0.1", 1)], "t")
    catalog._synced.set()
    catalog._disconnected_at = None
    catalog.freshness.proved()
    return catalog


def _feed(catalog: EtcdCatalog, key: str, value: str) -> None:
    if catalog._apply(f"/t/{key}".encode(), value.encode(), catalog._instances,
                      catalog._leases, catalog._expiry):
        catalog._changed(0)


async def test_a_renewal_after_the_old_expiry_passed_serves_the_instance_again() -> None:
    catalog = _fed_etcd_cache()
    web = instance("web", "w1", 80, lease="1f")
    _feed(catalog, "services/web/w1", json.dumps(web.to_dict()))
    _feed(catalog, "expiry/1f", repr(time.time() + 0.2))
    assert set((await catalog.snapshot()).instances) == {"w1"}

    await asyncio.sleep(0.3)  # the expiry passes: nothing is served
    catalog.freshness.proved()
    assert not (await catalog.snapshot()).instances

    # The renewal that was late (a slow member, a retried keepalive) arrives.
    _feed(catalog, "expiry/1f", repr(time.time() + 3))
    assert set((await catalog.snapshot()).instances) == {"w1"}
    await catalog.close()


async def test_an_earlier_expiry_is_applied_at_once() -> None:
    catalog = _fed_etcd_cache()
    _feed(catalog, "services/web/w1", json.dumps(instance("web", "w1", 80, lease="1f").to_dict()))
    _feed(catalog, "expiry/1f", repr(time.time() + 30))
    assert (await catalog.snapshot()).instances
    _feed(catalog, "expiry/1f", repr(time.time() - 1))
    assert not (await catalog.snapshot()).instances
    await catalog.close()


async def test_expiry_freezes_without_proof_and_catches_up_when_it_returns() -> None:
    freshness = Freshness(bound=0.2, grace=0.3)
    signal = ChangeSignal()
    snapshots = ExpiringSnapshots(signal.notify, freshness)
    expiry = {"a": time.time() + 0.55, "b": time.time() + 0.1}
    cache = [instance("web", "live", 80, lease="a"), instance("web", "dead", 81, lease="b")]
    freshness.proved()
    assert set(snapshots.build(cache, expiry.get).instances) == {"live", "dead"}

    await asyncio.sleep(0.15)  # b lapses while the proof is fresh: dropped
    assert set(snapshots.build(cache, expiry.get).instances) == {"live"}

    await asyncio.sleep(0.45)  # no proof since: frozen, a still served ...
    assert freshness.stale
    assert set(snapshots.build(cache, expiry.get).instances) == {"live"}
    await asyncio.sleep(0.1)  # ... also once its expiry has passed
    assert freshness.stale
    assert set(snapshots.build(cache, expiry.get).instances) == {"live"}

    # Proof returns: a lapsed during the stale spell, so it gets the grace to be renewed
    # (here 0.3 s) ...
    generation = signal.generation
    freshness.proved()
    assert signal.generation > generation, "watchers are woken to catch up"
    assert set(snapshots.build(cache, expiry.get).instances) == {"live"}
    # ... and is dropped once the grace is over without a renewal.
    await asyncio.sleep(0.35)
    freshness.proved()
    assert set(snapshots.build(cache, expiry.get).instances) == set()
    snapshots.close()


async def test_fresh_proof_keeps_expiry_exact() -> None:
    freshness = Freshness(bound=0.5)
    snapshots = ExpiringSnapshots(lambda: None, freshness)
    expires = time.time() + 0.1
    cache = [instance("web", "w", 80, lease="a")]
    freshness.proved()
    assert snapshots.build(cache, {"a": expires}.get).instances
    await asyncio.sleep(0.15)
    freshness.proved()
    assert not snapshots.build(cache, {"a": expires}.get).instances
    assert freshness.stale_spells == 0
    snapshots.close()


def test_keepalive_timeout_leaves_a_frozen_member_before_the_lease_lapses() -> None:
    assert keepalive_timeout(3, 1.5) == 0.75
    assert keepalive_timeout(60, 1.5) == 1.5
    assert keepalive_timeout(2, 1.5) == 0.5
    assert keepalive_timeout(0, 1.5) == 1.5


def test_zookeeper_smallest_ttl_follows_the_session_timeout() -> None:
    assert min_ttl(2.0) == 2
    assert min_ttl(4.0) == 4
    assert min_ttl(6.0) == 5


async def test_zookeeper_refuses_a_ttl_its_session_timeout_cannot_honour(
        zookeeper_url: str) -> None:
    catalog = await open_catalog(zookeeper_url + "?session_timeout=6")
    try:
        with pytest.raises(InvalidField) as refused:
            await catalog.create_lease(3, "too-short")
        assert refused.value.field == "ttl"
        assert "at least 5s" in str(refused.value)
        assert (await catalog.create_lease(5, "fine")).ttl == 5
    finally:
        await catalog.close()
