"""The check API as an app sees it: ttl checks reported over REST and over Consul's agent
endpoints, overdue reports turning critical, deregister_after, and what the health endpoints
show — against a real `pilotfish up` process."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest


@pytest.fixture
def name() -> str:
    return "chk-" + uuid.uuid4().hex[:8]


def register(api: httpx.Client, service: str, instance_id: str, *checks: dict[str, Any]
             ) -> dict[str, Any]:
    response = api.put(f"/v1/services/{service}/instances/{instance_id}",
                       json={"address": "127.0.0.1", "port": 8080, "ttl": 30,
                             "checks": list(checks)})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def checks(api: httpx.Client, service: str, instance_id: str) -> dict[str, dict[str, Any]]:
    for instance in api.get(f"/v1/services/{service}").json()["instances"]:
        if instance["id"] == instance_id:
            return {c["id"]: c for c in instance["checks"]}
    raise AssertionError(f"{instance_id} not registered")


def passing(api: httpx.Client, service: str) -> list[str]:
    response = api.get(f"/v1/health/service/{service}", params={"passing": ""})
    assert response.status_code == 200
    return [e["Service"]["ID"] for e in response.json()]


def test_a_ttl_check_reported_over_rest_then_left_to_expire(api: httpx.Client, name: str) -> None:
    register(api, name, "a1", {"id": "beat", "kind": "ttl", "ttl": 2})
    assert checks(api, name, "a1")["beat"]["status"] == "critical"  # Consul's initial status
    assert passing(api, name) == []
    reported = api.put(f"/v1/services/{name}/instances/a1/checks/beat/pass",
                       params={"note": "all good"})
    assert reported.status_code == 200, reported.text
    beat = checks(api, name, "a1")["beat"]
    assert (beat["status"], beat["output"]) == ("passing", "all good")
    assert beat["expires_at"] == pytest.approx(time.time() + 2, abs=1)
    assert passing(api, name) == ["a1"]
    # The registrar puts the instance again (its copy has no report): the report stays.
    register(api, name, "a1", {"id": "beat", "kind": "ttl", "ttl": 2})
    assert checks(api, name, "a1")["beat"]["status"] == "passing"
    warned = api.put(f"/v1/services/{name}/instances/a1/checks/beat/warn",
                     json={"note": "slow disk"})
    assert warned.json()["checks"][0]["output"] == "slow disk"
    assert passing(api, name) == []  # ?passing keeps passing only
    assert [i["id"] for i in api.get(f"/v1/services/{name}").json()["instances"]] == ["a1"]
    deadline = time.monotonic() + 4
    while checks(api, name, "a1")["beat"]["status"] != "critical":
        assert time.monotonic() < deadline, "the overdue ttl check was never written critical"
        time.sleep(0.1)
    assert checks(api, name, "a1")["beat"]["output"] == "TTL expired"


def test_only_ttl_checks_take_reports(api: httpx.Client, name: str) -> None:
    register(api, name, "h1", {"id": "web", "kind": "http", "status": "passing",
                               "target": "http://127.0.0.1:8080/"})
    refused = api.put(f"/v1/services/{name}/instances/h1/checks/web/fail")
    assert refused.status_code == 409 and refused.json()["field"] == "check"
    missing = api.put(f"/v1/services/{name}/instances/h1/checks/nope/pass")
    assert missing.status_code == 404
    assert api.put(f"/v1/services/{name}/instances/zz/checks/web/pass").status_code == 404


def test_consul_agent_check_endpoints_report_unchanged_apps(api: httpx.Client, name: str) -> None:
    register(api, name, "c1", {"id": "app", "kind": "ttl", "ttl": 30})
    register(api, name, "c2", {"id": f"only-{name}", "kind": "ttl", "ttl": 30},
             {"id": "db", "kind": "ttl", "ttl": 30})
    assert api.put("/v1/agent/check/pass/c1:app", params={"note": "up"}).status_code == 200
    assert checks(api, name, "c1")["app"]["output"] == "up"
    assert api.put("/v1/agent/check/warn/service:c1").status_code == 200  # its one ttl check
    assert checks(api, name, "c1")["app"]["status"] == "warning"
    assert api.put(f"/v1/agent/check/fail/only-{name}").status_code == 200  # unique id
    assert checks(api, name, "c2")[f"only-{name}"]["status"] == "critical"
    assert api.put("/v1/agent/check/pass/service:c2:2").status_code == 200  # Consul's n-th
    assert checks(api, name, "c2")["db"]["status"] == "passing"
    updated = api.put("/v1/agent/check/update/c1:app",
                      json={"Status": "passing", "Output": "HTTP 200"})
    assert updated.status_code == 200, updated.text
    assert checks(api, name, "c1")["app"]["output"] == "HTTP 200"
    unknown = api.put("/v1/agent/check/pass/no-such-check")
    assert unknown.status_code == 404 and "Unknown check ID" in unknown.text
    assert api.put("/v1/agent/check/update/c1:app", json={"Status": "up"}).status_code == 400


def test_health_endpoints_carry_every_check(api: httpx.Client, name: str) -> None:
    register(api, name, "k1", {"id": "web", "name": "GET /", "kind": "http", "status": "warning",
                               "output": "HTTP 429", "interval": 1, "timeout": 0.5})
    entry = api.get(f"/v1/health/service/{name}").json()[0]
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", "service:k1", "k1:web"]
    web = entry["Checks"][2]
    assert (web["Name"], web["Status"], web["Output"], web["Type"], web["Interval"],
            web["Timeout"], web["ServiceID"]) == ("GET /", "warning", "HTTP 429", "http", "1s",
                                                  "0.5s", "k1")
    listed = api.get(f"/v1/health/checks/{name}").json()
    assert [c["CheckID"] for c in listed] == ["service:k1", "k1:web"]
    warning = api.get("/v1/health/state/warning").json()
    assert "k1:web" in [c["CheckID"] for c in warning]


def test_critical_past_deregister_after_is_deregistered(api: httpx.Client, name: str) -> None:
    register(api, name, "d1", {"id": "dead", "kind": "tcp", "status": "critical",
                               "changed": time.time(), "deregister_after": 1})
    started = time.monotonic()
    while [i["id"] for i in api.get(f"/v1/services/{name}").json()["instances"]]:
        assert time.monotonic() - started < 4, "never deregistered"
        time.sleep(0.1)
    assert time.monotonic() - started > 0.5
