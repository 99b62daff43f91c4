"""SERVICE_CHECK_* settings into checks: Registrator's names, per port, the container's own
address (never the published host port), and a bad setting as a critical `sidecar` check."""

from __future__ import annotations

import pytest

from pilotfish.sidecar.check_labels import BadCheckSetting, duration
from tests.sidecar.test_rules import ADVERTISE, by_port, recorded, run


def test_an_http_check_goes_to_the_advertised_port_on_the_host_network() -> None:
    labels = {"SERVICE_NAME": "web", "SERVICE_PORT": "8080", "SERVICE_CHECK_HTTP": "/health",
              "SERVICE_CHECK_INTERVAL": "2s", "SERVICE_REGION": "eu"}
    (web,) = run(recorded("host_label_port", Labels=labels)).instances
    (check,) = web.checks
    assert (check.id, check.kind, check.status) == ("http", "http", "critical")
    assert check.target == f"http://{ADVERTISE}:8080/health"
    assert (check.interval, check.timeout) == (2.0, 2.0)
    assert web.meta == {"region": "eu"}  # check settings are not meta
    assert web.overall_health(0) == "critical" and web.health == "passing"


def test_bridge_checks_go_to_the_container_ip_and_port_not_the_published_one() -> None:
    """-p 18053:53/udp is registered at ADVERTISE:18053, but checked at 10.251.77.2:53:
    docker-proxy accepts on 18053 even when the app is dead."""
    details = recorded("bridge_published", Labels={"SERVICE_NAME": "pub",
                                                   "SERVICE_CHECK_TCP": "true"})
    (dns,) = run(details).instances
    assert dns.port == 18053
    assert [c.target for c in dns.checks] == ["10.251.77.2:53"]


def test_per_port_settings_apply_to_their_port_only() -> None:
    labels = {"SERVICE_80_CHECK_HTTP": "/ping", "SERVICE_443_CHECK_HTTPS": "/",
              "SERVICE_443_CHECK_TLS_SKIP_VERIFY": "1", "SERVICE_CHECK_INTERVAL": "500ms",
              "SERVICE_CHECK_TIMEOUT": "200ms", "SERVICE_80_CHECK_INITIAL_STATUS": "passing"}
    ports = by_port(run(recorded("host_multi_ports", Labels=labels)))
    (plain,) = ports[80].checks
    (secure,) = ports[443].checks
    assert (plain.target, plain.status, plain.interval, plain.timeout) == (
        f"http://{ADVERTISE}:80/ping", "passing", 0.5, 0.2)
    assert (secure.kind, secure.target, secure.status) == (
        "https", f"https+insecure://{ADVERTISE}:443/", "critical")
    assert secure.name == f"HTTP GET https://{ADVERTISE}:443/"


def test_several_checks_ttl_script_and_deregister_after() -> None:
    labels = {"SERVICE_PORT": "7000", "SERVICE_CHECK_TCP": "yes",
              "SERVICE_CHECK_SCRIPT": "nc -z $SERVICE_IP $SERVICE_PORT",
              "SERVICE_CHECK_TTL": "1m30s", "SERVICE_CHECK_DEREGISTER_AFTER": "10m"}
    (app,) = run(recorded("host_label_port", Labels=labels)).instances
    by_id = {c.id: c for c in app.checks}
    assert sorted(by_id) == ["script", "tcp", "ttl"]
    assert by_id["script"].target == f"nc -z {ADVERTISE} 7000"
    assert (by_id["ttl"].ttl, by_id["ttl"].target, by_id["ttl"].changed) == (90.0, "", 0.0)
    assert {c.deregister_after for c in app.checks} == {600.0}


def test_a_false_tcp_setting_declares_no_check() -> None:
    labels = {"SERVICE_PORT": "7000", "SERVICE_CHECK_TCP": "false"}
    (app,) = run(recorded("host_label_port", Labels=labels)).instances
    assert app.checks == ()


@pytest.mark.parametrize(("labels", "says"), [
    ({"SERVICE_CHECK_HTTP": "health"}, "SERVICE_CHECK_HTTP='health' must be a path"),
    ({"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_INTERVAL": "often"},
     "SERVICE_CHECK_INTERVAL='often' is not a duration"),
    ({"SERVICE_CHECK_HTTP": "/", "SERVICE_CHECK_INTERVAL": "10ms"}, "is under 0.1s"),
    ({"SERVICE_CHECK_TCP": "1", "SERVICE_CHECK_INITIAL_STATUS": "ok"},
     "SERVICE_CHECK_INITIAL_STATUS='ok' must be passing, warning or critical"),
    ({"SERVICE_CHECK_TTL": "0s"}, "SERVICE_CHECK_TTL must be more than 0"),
    ({"SERVICE_CHECK_HTPP": "/"}, "SERVICE_CHECK_HTPP is not a check setting"),
    ({"SERVICE_CHECK_INTERVAL": "5s"}, "SERVICE_CHECK_INTERVAL is set but no check is"),
    ({"SERVICE_CHECK_SCRIPT": "x" * 2000}, "checks.target"),
])
def test_a_bad_setting_registers_the_instance_critical_saying_why(
        labels: dict[str, str], says: str) -> None:
    (app,) = run(recorded("host_label_port", Labels={"SERVICE_PORT": "7000", **labels})
                 ).instances
    (check,) = app.checks
    assert (check.id, check.kind, check.status) == ("sidecar", "sidecar", "critical")
    assert says in check.output and check.output.startswith("bad check setting: ")
    assert not app.serving


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5s", 1.5), ("2h", 7200.0), ("3", 3.0),
    ("0", 0.0),
])
def test_durations_are_go_durations_or_seconds(text: str, seconds: float) -> None:
    assert duration(text, "check_interval") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 s", "1x", "-1s", "25h", "nan"])
def test_bad_durations_name_the_setting(text: str) -> None:
    with pytest.raises(BadCheckSetting, match="SERVICE_CHECK_TIMEOUT"):
        duration(text, "check_timeout")
