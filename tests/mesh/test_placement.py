"""Which registrations the mesh moves behind the inbound port, and what a sidecar without a
mesh does with a container that asks for one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pilotfish.catalog.backends.memory import MemoryCatalog
from pilotfish.catalog.model import Instance
from pilotfish.config import HostPort
from pilotfish.mesh.node import PREFIX, MeshNode, MeshSettings
from pilotfish.sidecar.containers import Rules
from pilotfish.sidecar.sidecar import Sidecar, SidecarSettings
from pilotfish.stack import Stack
from tests.mesh.pki import DOMAIN, start_ca_registry

HOST = "10.0.0.2"
ACL = """default_read = false
[[token]]
name = "host"
secret = "host-secret"
scopes = ["read", "write:db"]
"""


def _instance(name: str, address: str, port: int, **meta: str) -> Instance:
    return Instance(name, f"h:{name}:{port}", address, port, "unset", meta=meta)


async def test_mesh_instances_move_behind_the_inbound_port_and_the_rest_stay(
    tmp_path: Path
) -> None:
    catalog = MemoryCatalog()
    node = MeshNode(Stack(catalog), MeshSettings(HostPort("127.0.0.1", 0), HOST,
                                                 "http://127.0.0.1:1", "t", "test.mesh"))
    await node.start()
    try:
        placed = node.place([
            _instance("db", HOST, 8000, mtls="1"),  # host network: reached at loopback
            _instance("cache", "172.17.0.5", 6379, mtls="yes"),  # --internal: at its address
            _instance("web", HOST, 8080),  # not in the mesh
            _instance("api", HOST, 8081, mtls="0"),  # SERVICE_MTLS=0: not in the mesh
        ])
        port = node.inbound_port
        by_service = {i.service: i for i in placed}
        assert (by_service["db"].address, by_service["db"].port) == (HOST, port)
        assert by_service["db"].meta["mtls"] == "1" and by_service["cache"].meta["mtls"] == "1"
        assert (by_service["web"].port, by_service["api"].port) == (8080, 8081)
        assert node.targets == {"db": [("127.0.0.1", 8000)], "cache": [("172.17.0.5", 6379)]}
        assert set(node.keeper._tasks) == {"db", "cache"}  # certificates asked for
        # This test's CA never answers: the mesh instances are not served meanwhile.
        for service in ("db", "cache"):
            [check] = by_service[service].checks
            assert (check.id, check.status) == ("mesh", "critical"), check
            assert f"no certificate for {service}" in check.output
            assert not by_service[service].serving
        assert by_service["web"].checks == () and by_service["web"].serving
        again = {i.service: i for i in node.place([_instance("db", HOST, 8000, mtls="1")])}
        assert again["db"] == by_service["db"]  # unchanged: the registrar writes nothing
    finally:
        await node.stop()
        await catalog.close()


async def test_a_mesh_instance_is_served_while_its_certificate_is_valid(
    tmp_path: Path
) -> None:
    """Not before the first certificate arrives, and not after it expired unrenewed."""
    catalog = MemoryCatalog()
    db = _instance("db", HOST, 8000, mtls="1")
    api, _ = start_ca_registry(tmp_path, ACL, "--mesh-max-cert-ttl", "5")
    with api:
        node = MeshNode(Stack(catalog), MeshSettings(HostPort("127.0.0.1", 0), HOST, api.api,
                                                     "host-secret", DOMAIN, cert_ttl=5))
        changed = asyncio.Event()
        node.on_change = changed.set
        await node.start()
        try:
            [first] = node.place([db])
            assert [c.id for c in first.checks] == ["mesh"] and not first.serving
            assert (PREFIX + "certificates_missing", (), 1) in list(node.samples())
            await asyncio.wait_for(changed.wait(), 10)  # the sidecar registers again
            [certified] = node.place([db])
            assert certified.checks == () and certified.serving
            assert (PREFIX + "certificates_missing", (), 0) in list(node.samples())
            assert (certified.address, certified.port) == (HOST, node.inbound_port)
            api.stop()  # the CA goes away: the renewal at 2/3 of 5 s fails
            changed.clear()
            await asyncio.wait_for(changed.wait(), 15)
            [expired] = node.place([db])
            assert [c.id for c in expired.checks] == ["mesh"] and not expired.serving
        finally:
            await node.stop()
            await catalog.close()


async def test_a_sidecar_without_the_mesh_registers_no_container_that_asks_for_it(
    caplog: pytest.LogCaptureFixture
) -> None:
    catalog = MemoryCatalog()
    sidecar = Sidecar(catalog, SidecarSettings(Rules("h", HOST)))
    with caplog.at_level(logging.WARNING):
        placed = sidecar._placed([_instance("db", HOST, 8000, mtls="1"),
                                  _instance("web", HOST, 8080)])
        sidecar._placed([_instance("db", HOST, 8000, mtls="1")])
    assert [i.service for i in placed] == ["web"]
    assert sum("--mesh-inbound is not set" in r.message for r in caplog.records) == 1
    await sidecar.source.close()
    await catalog.close()
