"""The REST API as a client sees it: a real `pilotfish up` process and plain HTTP."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures.process import StartPilotfish


@pytest.fixture
def name() -> str:
    return "svc-" + uuid.uuid4().hex[:8]


def register(api: httpx.Client, service: str, instance_id: str, **body: object) -> httpx.Response:
    return api.put(f"/v1/services/{service}/instances/{instance_id}",
                   json={"address": "127.0.0.1", "port": 8080, **body})


def ids(api: httpx.Client, service: str, **params: str) -> list[str]:
    response = api.get(f"/v1/services/{service}", params=params)
    assert response.status_code == 200
    return [i["id"] for i in response.json()["instances"]]


def test_register_with_ttl_keep_alive_and_vanish(api: httpx.Client, name: str) -> None:
    created = register(api, name, "w1", ttl=2)
    assert created.status_code == 201
    lease = created.json()["lease"]
    assert ids(api, name) == ["w1"]
    again = register(api, name, "w1", ttl=2)
    assert again.status_code == 200
    assert again.json()["lease"] == lease  # its own lease is reused, not leaked
    for _ in range(3):
        time.sleep(1)
        assert api.put(f"/v1/services/{name}/instances/w1/keepalive").status_code == 200
    last = time.monotonic()
    assert ids(api, name) == ["w1"]
    while ids(api, name):
        assert time.monotonic() - last < 3.5
        time.sleep(0.05)
    assert time.monotonic() - last <= 2 + 1
    gone = api.put(f"/v1/services/{name}/instances/w1/keepalive")
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


def test_every_registration_must_expire(api: httpx.Client, name: str) -> None:
    neither = register(api, name, "w1")
    assert neither.status_code == 400
    assert "lease or ttl" in neither.json()["error"]
    lease = api.post("/v1/leases", json={"ttl": 10}).json()["id"]
    both = register(api, name, "w1", ttl=5, lease=lease)
    assert both.status_code == 400
    assert ids(api, name) == []


@pytest.mark.parametrize(
    ("path_service", "body", "field"),
    [
        ("Bad_Name", {"ttl": 5}, "service"),
        ("web", {"ttl": 5, "address": "300.1.1.1"}, "address"),
        ("web", {"ttl": 5, "port": 0}, "port"),
        ("web", {"ttl": 5, "port": "http"}, "port"),
        ("web", {"ttl": 5, "weight": 0}, "weight"),
        ("web", {"ttl": 5, "tags": "primary"}, "tags"),
        ("web", {"ttl": 5, "tags": ["a b"]}, "tags"),
        ("web", {"ttl": 5, "meta": {"k": 5}}, "meta"),
        ("web", {"ttl": 5, "health": "sick"}, "health"),
        ("web", {"ttl": 1}, "ttl"),
        ("web", {"ttl": 5, "colour": "red"}, "colour"),
        ("web", {"lease": "no-such-lease"}, "lease"),
    ],
)
def test_bad_input_names_the_field(
    api: httpx.Client, path_service: str, body: dict[str, object], field: str
) -> None:
    response = api.put(f"/v1/services/{path_service}/instances/x1",
                       json={"address": "127.0.0.1", "port": 80, **body})
    assert response.status_code in (400, 404, 422), response.text
    payload = response.json()
    assert payload["field"].split(".")[0] == field, payload
    assert payload["error"]
    assert ids(api, "web") == [] or "x1" not in ids(api, "web")


def test_malformed_json_is_a_clear_error(api: httpx.Client, name: str) -> None:
    response = api.put(f"/v1/services/{name}/instances/x", content=b"{not json")
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]


def test_revoking_a_lease_removes_all_its_instances(api: httpx.Client, name: str) -> None:
    lease = api.post("/v1/leases", json={"ttl": 30, "owner": "sidecar-a"})
    assert lease.status_code == 201
    lease_id = lease.json()["id"]
    assert api.get(f"/v1/leases/{lease_id}").json()["owner"] == "sidecar-a"
    for n in range(3):
        assert register(api, name, f"i{n}", lease=lease_id, port=9000 + n).status_code == 201
    assert sorted(ids(api, name)) == ["i0", "i1", "i2"]
    assert api.put(f"/v1/leases/{lease_id}/keepalive").status_code == 200
    assert api.delete(f"/v1/leases/{lease_id}").status_code == 204
    assert ids(api, name) == []
    unknown = api.put(f"/v1/leases/{lease_id}/keepalive")
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_lease"
    assert api.delete(f"/v1/leases/{lease_id}").status_code == 404


def test_deregister_and_listing(api: httpx.Client, name: str) -> None:
    register(api, name, "a", ttl=30, tags=["primary"])
    register(api, name, "b", ttl=30, tags=["replica"])
    assert api.get("/v1/services").json()["services"][name] == 2
    assert ids(api, name, tag="primary") == ["a"]
    assert ids(api, name.upper()) == ["a", "b"]
    assert api.delete(f"/v1/services/{name}/instances/a").status_code == 204
    assert api.delete(f"/v1/services/{name}/instances/a").status_code == 404
    assert api.delete("/v1/services/other/instances/b").status_code == 404
    assert ids(api, name) == ["b"]


def test_blocking_read_returns_soon_after_a_change(api: httpx.Client, name: str) -> None:
    delays = []
    for n in range(15):
        index = api.get(f"/v1/services/{name}").headers["X-Pilotfish-Index"]
        result: dict[str, object] = {}

        def poll(index: str = index, result: dict[str, object] = result) -> None:
            with httpx.Client(base_url=str(api.base_url), timeout=10) as client:
                response = client.get(f"/v1/services/{name}", params={"index": index,
                                                                       "wait": "5s"})
            result["at"] = time.monotonic()
            result["response"] = response

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(0.15)
        assert "at" not in result  # still blocked
        changed = time.monotonic()
        register(api, name, f"i{n}", ttl=30)
        waiter.join(5)
        response = result["response"]
        assert isinstance(response, httpx.Response)
        assert int(response.headers["X-Pilotfish-Index"]) > int(index)
        assert f"i{n}" in [i["id"] for i in response.json()["instances"]]
        delays.append(float(result["at"]) - changed)  # type: ignore[arg-type]
    median = statistics.median(delays)
    print(f"\nblocking read wake-up after a change: median {median * 1000:.1f} ms, "
          f"max {max(delays) * 1000:.1f} ms over {len(delays)}")
    assert median < 0.05


def test_blocking_read_ignores_other_services_and_times_out(
    api: httpx.Client, name: str
) -> None:
    index = api.get(f"/v1/services/{name}").headers["X-Pilotfish-Index"]
    started = time.monotonic()
    result: dict[str, httpx.Response] = {}
    waiter = threading.Thread(target=lambda: result.setdefault("r", api.get(
        f"/v1/services/{name}", params={"index": index, "wait": "1s"})))
    waiter.start()
    register(api, name + "-other", "x", ttl=30)
    waiter.join(5)
    assert time.monotonic() - started >= 0.9
    assert result["r"].json()["instances"] == []


def test_bad_wait_is_refused(api: httpx.Client, name: str) -> None:
    response = api.get(f"/v1/services/{name}", params={"index": 1, "wait": "forever"})
    assert response.status_code == 400 and response.json()["field"] == "wait"


def test_health_metrics_and_openapi(api: httpx.Client, name: str) -> None:
    register(api, name, "m1", ttl=30)
    assert api.get("/v1/health").json()["status"] == "ok"
    text = api.get("/metrics").text
    assert "pilotfish_registrations " in text
    assert 'pilotfish_http_requests_total{status="201"}' in text
    assert "pilotfish_leases " in text
    assert "pilotfish_lease_expirations_total" in text
    assert "/v1/services/{service}/instances/{instance_id}" in api.get(
        "/v1/openapi.json").json()["paths"]


def test_writes_need_the_token_when_one_is_set(
    pilotfish: StartPilotfish, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    running = pilotfish("registry", "--api", "127.0.0.1:0", "--token-file", str(token_file))
    with httpx.Client(base_url=running.api, timeout=5) as client:
        denied = register(client, "web", "w1", ttl=5)
        assert denied.status_code == 401
        assert client.post("/v1/leases", json={"ttl": 5},
                           headers={"Authorization": "Bearer wrong"}).status_code == 401
        allowed = client.put("/v1/services/web/instances/w1",
                             json={"address": "127.0.0.1", "port": 80, "ttl": 5},
                             headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 201
        assert ids(client, "web") == ["w1"]  # reads stay open


def test_environment_configures_and_sigterm_stops_cleanly(pilotfish: StartPilotfish) -> None:
    running = pilotfish("registry", env={"PILOTFISH_API": "127.0.0.1:0"})
    assert httpx.get(running.api + "/v1/health").status_code == 200
    assert running.stop() == 0
    assert any("pilotfish stopping" in line for line in running.lines)


def test_unknown_registry_scheme_is_a_clear_error(pilotfish: StartPilotfish) -> None:
    with pytest.raises(RuntimeError, match="unknown scheme 'redis'"):
        pilotfish("up", "--api", "127.0.0.1:0", "--dns", "off", "--registry", "redis://x")


def test_sigterm_answers_pending_long_polls_and_exits_promptly(
    pilotfish: StartPilotfish,
) -> None:
    running = pilotfish("registry", "--api", "127.0.0.1:0")
    index = httpx.get(running.api + "/v1/services/web").headers["X-Pilotfish-Index"]
    result: dict[str, httpx.Response] = {}
    polls = [threading.Thread(target=lambda path=path: result.setdefault(path, httpx.get(
        running.api + path, params={"index": index, "wait": "60s"}, timeout=30)))
        for path in ("/v1/services/web", "/v1/catalog")]
    for poll in polls:
        poll.start()
    time.sleep(1.0)  # both polls reach the server, even on a loaded machine
    started = time.monotonic()
    assert running.stop() == 0
    for poll in polls:
        poll.join(5)
    assert time.monotonic() - started < 2.0
    assert {path: r.status_code for path, r in result.items()} == {
        "/v1/services/web": 200, "/v1/catalog": 200}


def test_deleting_a_ttl_only_instance_revokes_its_own_lease(
    api: httpx.Client, name: str
) -> None:
    shared = api.post("/v1/leases", json={"ttl": 30}).json()["id"]
    assert register(api, name, "rider", lease=shared).status_code == 201
    own_leases = []
    for n in range(200):
        created = register(api, name, f"d{n}", ttl=600)
        assert created.status_code == 201
        own_leases.append(created.json()["lease"])
        assert api.delete(f"/v1/services/{name}/instances/d{n}").status_code == 204
    # each lease is gone at once (a TTL of 600 s rules out lapsing), whatever other tests'
    # leases do meanwhile on this shared server
    assert {api.get(f"/v1/leases/{lease}").status_code for lease in own_leases} == {404}
    assert api.delete(f"/v1/services/{name}/instances/rider").status_code == 204
    assert api.get(f"/v1/leases/{shared}").status_code == 200  # not the API's to revoke


@pytest.mark.parametrize(
    ("path", "params", "body", "field"),
    [
        ("/v1/services/{name}/instances/p1", {}, {"meta": {"priority": "\u00b2"}}, "meta.priority"),
        ("/v1/services/{name}/instances/p1", {}, {"meta": {"priority": "65536"}}, "meta.priority"),
        ("/v1/services/{name}/instances/p1", {}, {"tags": ["a\n"]}, "tags.0"),
        ("/v1/services/{name}/instances/p1", {}, {"meta": {"a\n": "v"}}, "meta"),
        ("/v1/services/{name}%0A/instances/p1", {}, {}, "service"),
        ("/v1/services/\u212a{name}/instances/p1", {}, {}, "service"),
        ("/v1/services/{name}/instances/p1%0A", {}, {}, "instance_id"),
        ("/v1/services/{name}", {"index": "1", "wait": "\u0663s"}, None, "wait"),
        ("/v1/services/{name}", {"index": "1", "wait": "3s\n"}, None, "wait"),
        ("/v1/services/{name}", {"index": "\uff13"}, None, "index"),
        ("/v1/services/{name}", {"index": "3\n"}, None, "index"),
    ],
)
def test_hostile_characters_are_refused_naming_the_field(
    api: httpx.Client, name: str, path: str, params: dict[str, str],
    body: dict[str, object] | None, field: str,
) -> None:
    url = path.format(name=name)
    if body is None:
        response = api.get(url, params=params)
    else:
        response = api.put(url, json={"address": "127.0.0.1", "port": 80, "ttl": 30, **body})
    assert response.status_code in (400, 422), response.text
    assert response.json()["field"] == field, response.json()
    assert ids(api, name) == []


def test_a_body_over_the_limit_is_refused_and_the_flag_sets_it(
    api: httpx.Client, name: str, pilotfish: StartPilotfish
) -> None:
    padded = {"address": "127.0.0.1", "port": 80, "ttl": 30, "meta": {"pad": "x" * 500}}
    big = api.put(f"/v1/services/{name}/instances/b1", content=b" " * (65 * 1024) + json_bytes(
        padded))
    assert big.status_code == 413 and big.json()["field"] == "body"
    assert register(api, name, "b1", ttl=30).status_code == 201  # the default fits the rest
    small = pilotfish("registry", "--api", "127.0.0.1:0", "--max-body", "512")
    with httpx.Client(base_url=small.api, timeout=5) as client:
        assert client.put("/v1/services/web/instances/w1", content=json_bytes(
            padded)).status_code == 413
        assert register(client, "web", "w1", ttl=30).status_code == 201


def json_bytes(body: object) -> bytes:
    return json.dumps(body).encode()


def test_a_wrong_method_gets_405_naming_every_allowed_one(api: httpx.Client, name: str) -> None:
    for method in ("OPTIONS", "POST", "PATCH"):
        response = api.request(method, f"/v1/services/{name}/instances/x")
        assert response.status_code == 405, response.text
        assert response.headers["Allow"] == "DELETE, PUT"
        assert response.json()["code"] == "method_not_allowed"
    assert api.request("OPTIONS", "/v1/leases/abc").headers["Allow"] == "DELETE, GET"
    unknown = api.get("/v1/nowhere")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
