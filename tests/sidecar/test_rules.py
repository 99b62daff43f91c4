"""Every SERVICE_* rule and every network-mode address rule, on `docker inspect` output recorded
from the test engine (tests/sidecar/data/*.json, made by tests/sidecar/data/capture.py).

A row may change the recorded Env, Labels, Image or State before deciding, to test one rule
on an otherwise real container.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pilotfish.catalog.model import Instance
from pilotfish.sidecar.containers import Decision, Rules, decide

DATA = Path(__file__).parent / "data"
SIDECAR = "h1"
ADVERTISE = "10.1.2.3"


def recorded(case: str, **changes: Any) -> dict[str, Any]:
    """One recorded container, with Config/State keys replaced as given (Labels=..., ...)."""
    details: dict[str, Any] = json.loads((DATA / f"{case}.json").read_text())
    details = copy.deepcopy(details)
    for key, value in changes.items():
        target = details["State"] if key in ("Running", "Paused", "Health") else details["Config"]
        target[key] = value
    return details


def run(details: dict[str, Any], advertise: str = ADVERTISE, **flags: bool) -> Decision:
    """decide() with this file's sidecar id, resolving container:<id> from the recordings."""
    everyone = {d["Id"]: d for d in (json.loads(p.read_text()) for p in DATA.glob("*.json"))}
    return decide(details, Rules(SIDECAR, advertise, **flags), everyone.get)


def by_port(decision: Decision) -> dict[int, Instance]:
    """The decided instances by the port others connect to."""
    return {i.port: i for i in decision.instances}


def reasons(decision: Decision) -> list[str]:
    """The skip reasons, in order."""
    return [skip.reason for skip in decision.skipped]


# -- SERVICE_* settings --------------------------------------------------------------


def test_labels_beat_env_and_other_keys_become_meta() -> None:
    """SERVICE_NAME label "web" beats env "from-env"; SERVICE_TAGS splits on commas;
    SERVICE_WEIGHT is the weight; SERVICE_REGION (label) and SERVICE_ZONE (env) are meta;
    OTHER (not SERVICE_*) is ignored."""
    (web,) = run(recorded("host_labels")).instances
    assert (web.service, web.address, web.port) == ("web", ADVERTISE, 8080)
    assert web.tags == ("blue", "canary")
    assert web.weight == 5
    assert dict(web.meta) == {"region": "eu", "zone": "z1"}
    assert web.id == f"{SIDECAR}:cap-host-labels:8080"
    assert web.health == "passing"


def test_env_alone_is_read() -> None:
    (api,) = run(recorded("host_env_only")).instances
    assert (api.service, api.tags, api.port) == ("api", ("v1",), 9000)


def test_a_label_beats_the_env_for_every_key() -> None:
    details = recorded("host_env_only", Labels={"SERVICE_TAGS": "v2, extra ,"})
    (api,) = run(details).instances
    assert (api.service, api.tags) == ("api", ("v2", "extra"))


def test_service_id_replaces_the_generated_id() -> None:
    (web,) = run(recorded("host_service_id")).instances
    assert (web.id, web.service) == ("custom-id", "web")


def test_service_ignore_skips_the_container() -> None:
    decision = run(recorded("host_ignored"))
    assert decision.instances == () and reasons(decision) == ["ignored"]


def test_port_settings_beat_general_ones_and_name_several_ports() -> None:
    """80, 443 and 53/udp exposed: SERVICE_443_NAME names 443 alone (no suffix); 80 gets the
    image name plus "-80"; SERVICE_80_TAGS beats SERVICE_TAGS for 80; SERVICE_53_IGNORE skips
    53/udp only."""
    decision = run(recorded("host_multi_ports"))
    ports = by_port(decision)
    assert sorted(ports) == [80, 443]
    assert (ports[443].service, ports[443].tags) == ("secure", ("all",))
    assert (ports[80].service, ports[80].tags) == ("pf-busybox-80", ("plain",))
    assert ports[80].id == f"{SIDECAR}:cap-host-multi-ports:80"
    assert reasons(decision) == ["ignored"]


def test_udp_ports_get_an_udp_id_suffix_and_tag() -> None:
    labels = {"SERVICE_NAME": "dns", "SERVICE_53_NAME": "dns"}
    ports = by_port(run(recorded("host_multi_ports", Labels=labels)))
    assert ports[53].id == f"{SIDECAR}:cap-host-multi-ports:53:udp"
    assert ports[53].tags == ("udp",) and ports[53].service == "dns"
    assert ports[80].service == "dns-80"  # general name, several ports


def test_a_general_service_id_on_several_ports_stays_unique() -> None:
    labels = {"SERVICE_ID": "mine", "SERVICE_443_ID": "mine-tls", "SERVICE_53_IGNORE": "1"}
    ports = by_port(run(recorded("host_multi_ports", Labels=labels)))
    assert (ports[80].id, ports[443].id) == ("mine:80", "mine-tls")


def test_the_default_name_is_the_image_base_name_as_a_dns_label() -> None:
    (one,) = run(recorded("image_name")).instances
    assert one.service == "pf-busybox" and one.id == f"{SIDECAR}:cap-image-name:80"
    (two,) = run(recorded("image_name", Image="registry:5000/team/My_App.v2:1.0")).instances
    assert two.service == "my-app-v2"


@pytest.mark.parametrize("image", ["sha256:" + "a" * 64, "___"])
def test_an_image_without_a_usable_name_is_skipped_saying_why(image: str) -> None:
    decision = run(recorded("image_name", Image=image))
    assert decision.instances == () and reasons(decision) == ["invalid-name"]
    assert "SERVICE_NAME" in decision.skipped[0].detail


def test_explicit_registers_only_containers_that_set_a_name() -> None:
    assert reasons(run(recorded("image_name"), explicit=True)) == ["explicit"]
    assert len(run(recorded("host_labels"), explicit=True).instances) == 1
    port_named = recorded("image_name", Labels={"SERVICE_80_NAME": "web"})
    assert [i.service for i in run(port_named, explicit=True).instances] == ["web"]


@pytest.mark.parametrize(("setting", "service"), [
    ("my_app", "my-app"), ("My.App_v2", "my-app-v2"), ("_my__app.", "my-app"), ("web", "web"),
    ("Web", "web"),
])
def test_an_explicit_name_is_made_a_dns_label_as_an_image_name_is(setting: str,
                                                                   service: str) -> None:
    """Consul and Registrator take `my_app`; the image `my_app` is registered `my-app`."""
    decision = run(recorded("image_name", Labels={"SERVICE_NAME": setting}))
    assert [i.service for i in decision.instances] == [service]
    assert decision.renamed == (((setting, service),) if setting.lower() != service else ())
    (by_image,) = run(recorded("image_name", Image=setting.lower())).instances
    assert by_image.service == service
    port_named = run(recorded("image_name", Labels={"SERVICE_80_NAME": setting}))
    assert [i.service for i in port_named.instances] == [service]


@pytest.mark.parametrize(("labels", "reason"), [
    ({"SERVICE_NAME": "Not_A Label!"}, "invalid-name"),
    ({"SERVICE_NAME": "___"}, "invalid-name"),
    ({"SERVICE_NAME": "a" * 64}, "invalid-name"),
    ({"SERVICE_NAME": "w\u212aeb"}, "invalid-name"),  # a Kelvin sign is not a k
    ({"SERVICE_NAME": "web", "SERVICE_WEIGHT": "heavy"}, "invalid-setting"),
    ({"SERVICE_NAME": "web", "SERVICE_WEIGHT": "70000"}, "invalid-setting"),
    ({"SERVICE_NAME": "web", "SERVICE_ID": "bad id"}, "invalid-setting"),
])
def test_bad_settings_skip_the_port_with_a_reason(labels: dict[str, str], reason: str) -> None:
    decision = run(recorded("image_name", Labels=labels))
    assert decision.instances == () and reasons(decision) == [reason]


# -- addresses by network mode -----------------------------------------------------------


def test_host_mode_uses_a_labelled_port_when_nothing_is_exposed() -> None:
    (db,) = run(recorded("host_label_port")).instances
    assert (db.service, db.address, db.port) == ("db", ADVERTISE, 5432)


def test_host_mode_without_ports_is_skipped() -> None:
    assert reasons(run(recorded("host_no_ports"))) == ["no-ports"]


def test_network_none_is_skipped() -> None:
    assert reasons(run(recorded("none"))) == ["network-none"]


def test_container_mode_takes_the_ports_of_the_joined_container() -> None:
    decision = run(recorded("joined"))
    (joined,) = decision.instances
    assert (joined.service, joined.address, joined.port) == ("joined", ADVERTISE, 8080)
    assert decision.joins is not None


def _started(details: dict[str, Any], when: str) -> dict[str, Any]:
    details["State"]["StartedAt"] = when
    return details


@pytest.mark.parametrize(("owner_mode", "joiner_started", "owner_started", "stale"), [
    ("pf-capture", "2026-01-01T10:00:00.5Z", "2026-01-01T10:00:01.25Z", True),  # owner restarted
    ("pf-capture", "2026-01-01T10:00:01.3Z", "2026-01-01T10:00:01.25Z", False),  # joined after
    ("pf-capture", "2026-01-01T10:00:01.000000001Z", "2026-01-01T10:00:01Z", False),
    ("pf-capture", "2026-01-01T10:00:00.999999999Z", "2026-01-01T10:00:01Z", True),
    ("pf-capture", "0001-01-01T00:00:00Z", "2026-01-01T10:00:01Z", False),  # being started
    ("host", "2026-01-01T10:00:00Z", "2026-01-01T10:00:01Z", False),  # the host's namespace
])
def test_a_joiner_its_owner_restarted_away_from_is_skipped(
        owner_mode: str, joiner_started: str, owner_started: str, stale: bool) -> None:
    """Docker leaves a container:<owner> joiner in the namespace its owner had when it
    joined; an owner that restarted since has another (unless it is on the host network)."""
    owner = _started(recorded("bridge_dynamic"), owner_started)
    owner["HostConfig"]["NetworkMode"] = owner_mode
    joiner = _started(recorded("joined"), joiner_started)
    decision = decide(joiner, Rules(SIDECAR, ADVERTISE, internal=True), lambda _: owner)
    if stale:
        assert decision.instances == () and reasons(decision) == ["joined-stale"]
        assert "restart this one" in decision.skipped[0].detail
    else:
        assert decision.instances and not decision.skipped


def test_bridge_published_ports_use_the_host_port() -> None:
    """-p 127.0.0.1:18080:80 is loopback-only: skipped unless the advertised IP is loopback;
    -p 18053:53/udp is advertised at the advertised IP; 9999 is not published."""
    decision = run(recorded("bridge_published"))
    (dns,) = decision.instances
    assert (dns.address, dns.port, dns.id) == (ADVERTISE, 18053,
                                               f"{SIDECAR}:cap-bridge-published:53:udp")
    assert sorted(reasons(decision)) == ["loopback", "unpublished"]
    local = by_port(run(recorded("bridge_published"), advertise="127.0.0.1"))
    assert local[18080].address == "127.0.0.1" and local[18053].address == "127.0.0.1"


def test_bridge_dynamic_ports_from_dash_p() -> None:
    ports = by_port(run(recorded("bridge_dynamic")))
    assert {p: i.service for p, i in ports.items()} == {32771: "dyn-80", 32769: "dyn-81"}
    assert all(i.address == ADVERTISE for i in ports.values())


def test_internal_uses_the_container_address_and_exposed_ports() -> None:
    ports = by_port(run(recorded("bridge_dynamic"), internal=True))
    assert sorted(ports) == [80, 81]
    assert {i.address for i in ports.values()} == {"10.251.77.3"}
    ports = by_port(run(recorded("bridge_published"), internal=True))
    assert sorted(ports) == [53, 80, 9999]


@pytest.mark.parametrize("address", ["224.0.0.1", "255.255.255.255", "ff02::1"])
def test_a_port_docker_publishes_on_an_unusable_address_is_skipped(address: str) -> None:
    details = recorded("bridge_published")
    details["NetworkSettings"]["Ports"]["80/tcp"] = [{"HostIp": address, "HostPort": "18080"}]
    decision = run(details)
    assert sorted(reasons(decision)) == ["unpublished", "unusable-address"]
    (skip,) = [s for s in decision.skipped if s.reason == "unusable-address"]
    assert address in skip.detail and "80/tcp" in skip.detail
    assert [i.port for i in decision.instances] == [18053]


@pytest.mark.parametrize("address", ["0.0.0.0", "224.0.0.1", "::"])  # noqa: S104
def test_an_unusable_container_address_is_skipped_with_internal(address: str) -> None:
    details = recorded("bridge_dynamic")
    details["NetworkSettings"]["Networks"]["pf-capture"]["IPAddress"] = address
    decision = run(details, internal=True)
    assert decision.instances == () and reasons(decision) == ["unusable-address"]
    assert address in decision.skipped[0].detail


# -- health and state ------------------------------------------------------------------


def test_docker_health_decides_whether_the_instance_is_served() -> None:
    assert [i.health for i in run(recorded("health")).instances] == ["passing"]
    for status in ("unhealthy", "starting"):
        health = {**recorded("health")["State"]["Health"], "Status": status}
        assert [i.health for i in run(recorded("health", Health=health)).instances] == [
            "critical"]


def test_paused_is_critical_and_stopped_is_nothing() -> None:
    assert [i.health for i in run(recorded("host_labels", Paused=True)).instances] == [
        "critical"]
    assert run(recorded("host_labels", Running=False)) == Decision()
