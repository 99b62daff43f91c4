"""The LB's routes API and --routes-file against hostile clients and careless operators.

Every bad input is a 4xx in the registry's error shape {"error", "code", "field"} naming the
field, never a 500 or a traceback; a routes file is validated whole and applied all or
nothing, on SIGHUP as at start, and the log says at once which file and line is wrong.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.fixtures.process import PilotfishProcess, start_pilotfish
from tests.fixtures.servers import HOST, free_port

Case = tuple[str, str, Any, int, str, str | None]
"""method, raw path, body (bytes as sent, anything else as JSON), status, code, field."""


def _request(address: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as given (no client-side normalising)."""
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def lb() -> Iterator[PilotfishProcess]:
    """`pilotfish lb` with one route from the flags and its routes API."""
    process = start_pilotfish("lb", "--registry", "memory://", "--lb-api", f"{HOST}:0",
                              "--route", f"{HOST}:{free_port()}=web", expect=("lb API",))
    yield process
    process.stop()
    assert not process.crashes(), process.crashes()


def _cases(key: str) -> list[Case]:
    route = f"/v1/routes/{key}"
    deep = b"[" * 30_000 + b"]" * 30_000  # 60 KB, under the body limit
    cases: list[Case] = [
        ("PUT", route, deep, 400, "invalid", "body"),
        ("PUT", route, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "invalid", "body"),
        ("PUT", route, b"{", 400, "invalid", "body"),
        ("PUT", route, b"", 400, "invalid", "body"),
        ("PUT", route, b"\xff\xfe\x00", 400, "invalid", "body"),
        ("PUT", route, b"NaN", 400, "invalid", "body"),
        ("PUT", route, [], 400, "invalid", "body"),
        ("PUT", route, "web", 400, "invalid", "body"),
        ("PUT", route, b'{"service": "web", "service": "db"}', 400, "invalid", "service"),
        ("PUT", route, b"x" * (65 * 1024), 413, "too_large", "body"),
        ("PUT", route, {}, 400, "invalid", "service"),
        ("PUT", route, {"service": 5}, 400, "invalid", "service"),
        ("PUT", route, {"service": ""}, 400, "invalid", "service"),
        ("PUT", route, {"service": "bad_name"}, 400, "invalid", "service"),
        ("PUT", route, {"service": "w" * 64}, 400, "invalid", "service"),
        ("PUT", route, {"service": "web."}, 400, "invalid", "service"),
        ("PUT", route, {"service": "web", "tag": 5}, 400, "invalid", "tag"),
        ("PUT", route, {"service": "web", "tag": ""}, 400, "invalid", "tag"),
        ("PUT", route, {"service": "web", "tag": "a b"}, 400, "invalid", "tag"),
        ("PUT", route, {"service": "web.v1", "tag": "v2"}, 400, "invalid", "tag"),
        ("PUT", route, {"service": "web", "colour": "blue"}, 400, "invalid", "colour"),
        ("PUT", route, {"service": "web", "listen": "127.0.0.1:1"}, 400, "invalid", "listen"),
        ("PUT", route, {"service": "web", "route": 5}, 400, "invalid", "route"),
    ]
    for value in ["²", "٣", "１", "3", "", " 1", "1e3", 3.5, 1e400, True, -1, 1_000_001,
                  10 ** 30, [], {}]:
        body = {"service": "web", "max_connections": value}
        cases.append(("PUT", route, body, 400, "invalid", "max_connections"))
    cases.append(("PUT", route, b'{"service": "web", "max_connections": ' + b"9" * 5000 + b"}",
                  400, "invalid", "body"))  # beyond Python's int-from-text digit limit
    for value in [0, 1, {}, [], "", "V1", "v3", "none", True, False]:
        cases.append(("PUT", route, {"service": "web", "proxy_protocol": value}, 400, "invalid",
                      "proxy_protocol"))
    for value in [0, {}, "", "P2C", "random", True]:
        cases.append(("PUT", route, {"service": "web", "balance": value}, 400, "invalid",
                      "balance"))
    port = key.rpartition(":")[2]
    for bad in ["127.1:" + port, "127.0.0.01:" + port, "0127.0.0.1:" + port,
                f"127.0.0.1:0{port}", "127.0.0.1:" + quote("١٩٠٠٤"), "127.0.0.1%253A" + port,
                "127.0.0.1%3A" + quote("٣"), "localhost:" + port, "[::0001]:" + port,
                "[::1%25lo]:" + port, "[::1]", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536",
                ":" + port, "::1:" + port, "999.1.1.1:" + port, "127.0.0.1:+80",
                "127.0.0.1:%2080", "a/b", "[127.0.0.1]:" + port, "127.0.0.1:" + "9" * 5000]:
        cases.append(("PUT", f"/v1/routes/{bad}", {"service": "web"}, 400, "invalid",
                      "listen"))
    cases += [
        ("POST", "/v1/routes", {"service": "web"}, 405, "method_not_allowed", None),
        ("DELETE", "/v1/routes", None, 405, "method_not_allowed", None),
        ("PATCH", route, {"service": "web"}, 405, "method_not_allowed", None),
        ("POST", route, {"service": "web"}, 405, "method_not_allowed", None),
        ("OPTIONS", route, None, 405, "method_not_allowed", None),
        ("GET", f"/v1/routes/{HOST}:1", None, 404, "not_found", "listen"),
        ("DELETE", f"/v1/routes/{HOST}:1", None, 404, "not_found", "listen"),
        ("GET", "/v1/nothing", None, 404, "not_found", None),
        ("GET", "/v1/routes/127.1:1", None, 400, "invalid", "listen"),
    ]
    return cases


def test_every_bad_input_is_a_4xx_naming_the_field(lb: PilotfishProcess) -> None:
    api = lb.listening["lb API"]
    key = f"{HOST}:{free_port()}"
    cases = _cases(key)
    wrong: list[str] = []
    server_errors = 0
    for method, path, body, status, code, field in cases:
        got, headers, raw = _request(api, method, path, body)
        server_errors += got >= 500
        answer = json.loads(raw) if raw else {}
        shown = f"{method} {path[:60]} {str(body)[:60]}"
        if (got, answer.get("code"), answer.get("field")) != (status, code, field):
            wrong.append(f"{shown}: {got} {raw[:200]!r}")
        elif not isinstance(answer.get("error"), str) or len(answer["error"]) > 300:
            wrong.append(f"{shown}: no bounded message: {raw[:200]!r}")
        elif got == 405 and not headers.get("allow"):
            wrong.append(f"{shown}: 405 without Allow")
    print(f"routes API: {len(cases)} hostile cases, {server_errors} answered 5xx")
    assert not wrong, "\n".join(wrong)
    assert server_errors == 0
    assert _request(api, "GET", "/v1/routes")[0] == 200  # still serving
    assert _request(api, "GET", f"/v1/routes/{key}")[0] == 404  # nothing half-made
    log = "".join(lb.lines)
    assert "Traceback" not in log and max(map(len, lb.lines)) < 1000


VALUES: list[Any] = [None, 0, 1, -1, 3.5, 1e308, True, False, "", " ", "web", "WEB", "v1",
                    "v2", "p2c", "hash", "²", "٣", "1", "9" * 40, "a\nb", "\u0000", "é", [], {},
                    [1], {"a": 1}, "x" * 300]
LISTEN_PIECES = ["127.0.0.1", "127.1", "[::1]", "::1", "0.0.0.0", "localhost", "[::]", "",
                 "%3A", "%253A", "%25", ":", ":0", ":65536", ":1x", ":%D9%A1", "[", "]", "/", "."]


def _acceptable(key: str, body: dict[str, Any]) -> bool:
    """What the API must accept, and only that: every value of the right type and range."""
    def valid_tag(value: object) -> bool:
        return isinstance(value, str) and 0 < len(value) <= 255 and all(
            "!" <= c <= "~" for c in value)

    service = body.get("service")
    return (set(body) <= {"service", "tag", "balance", "proxy_protocol", "max_connections",
                          "listen", "route"}
            and service in ("web", "WEB", "v1", "v2", "p2c", "hash", "1", "9" * 40)
            and (body.get("tag") is None or valid_tag(body["tag"]))
            and body.get("balance") in (None, "p2c", "hash")
            and body.get("proxy_protocol") in (None, "v1", "v2")
            and (body.get("max_connections") is None or (
                type(body["max_connections"]) is int and 0 <= body["max_connections"] <= 10**6))
            and body.get("listen") in (None, key)
            and (body.get("route") is None or isinstance(body["route"], str)))


def test_random_route_bodies_and_paths_get_2xx_exactly_when_valid(
        lb: PilotfishProcess) -> None:
    """A bounded, seeded fuzz of bodies and listen paths: never a 5xx; 2xx exactly for the
    valid ones; every refusal in the error shape, naming a field."""
    api = lb.listening["lb API"]
    rng = random.Random(21)
    fields = ["service", "tag", "balance", "proxy_protocol", "max_connections", "listen",
              "route", "colour"]
    answers: dict[int, int] = {}
    for n in range(400):
        valid_key = n % 4 != 0
        if valid_key:
            key = f"{HOST}:{free_port()}"
        else:  # no combination of these pieces is a canonical HOST:PORT
            key = "".join(rng.choice(LISTEN_PIECES) for _ in range(rng.randint(1, 4)))
        body = {name: rng.choice(VALUES) for name in rng.sample(fields, rng.randint(0, 3))}
        if rng.random() < 0.7:
            body["service"] = "web"
        status, _, raw = _request(api, "PUT", f"/v1/routes/{key}", body)
        answers[status] = answers.get(status, 0) + 1
        assert status < 500, (key, body, raw[:300])
        assert (status in (200, 201)) == (valid_key and _acceptable(key, body)), \
            (key, body, status, raw[:300])
        if status in (200, 201):
            assert _request(api, "DELETE", f"/v1/routes/{key}")[0] == 204
        elif status not in (404, 405):  # an empty key: "/v1/routes/" is the list (GET only)
            answer = json.loads(raw)
            assert answer["code"] and answer["error"] and answer.get("field"), (key, body, raw)
    print(f"routes API fuzz: 400 requests, answers {sorted(answers.items())}")
    assert "Traceback" not in "".join(lb.lines)


def test_allow_names_every_method_of_the_path(lb: PilotfishProcess) -> None:
    api = lb.listening["lb API"]
    assert _request(api, "POST", "/v1/routes")[1]["allow"] == "GET, HEAD"
    assert _request(api, "PATCH", f"/v1/routes/{HOST}:1")[1]["allow"] == \
        "DELETE, GET, HEAD, PUT"
    assert _request(api, "HEAD", "/v1/routes")[0] == 200


def test_strict_values_and_what_a_good_route_says(lb: PilotfishProcess) -> None:
    api = lb.listening["lb API"]
    key = f"{HOST}:{free_port()}"
    body = {"service": "web", "tag": None, "balance": None, "proxy_protocol": None,
            "max_connections": None}  # null: the default, as if left out
    status, headers, raw = _request(api, "PUT", f"/v1/routes/{key}", body)
    assert status == 201, raw
    made = json.loads(raw)
    assert made["listen"] == key and made["proxy_protocol"] is None and made["balance"] == "p2c"
    assert headers["location"] == f"/v1/routes/{key}"
    changed = {**made, "proxy_protocol": "v2", "max_connections": 7}  # GET's shape PUT back
    status, _, raw = _request(api, "PUT", f"/v1/routes/{key}", changed)
    assert status == 200, raw
    assert json.loads(raw)["route"] == f"{key}=web?proxy_protocol=v2&max_connections=7"
    metrics = _request(api, "GET", "/metrics")[2].decode()
    assert f'route="{key}"' in metrics and ':0"' not in metrics
    assert _request(api, "DELETE", f"/v1/routes/{key}")[0] == 204


def test_a_port_that_cannot_be_bound_is_a_409_and_changes_nothing(lb: PilotfishProcess) -> None:
    api = lb.listening["lb API"]
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        key = f"{HOST}:{taken.getsockname()[1]}"
        status, _, raw = _request(api, "PUT", f"/v1/routes/{key}", {"service": "web"})
    assert status == 409 and json.loads(raw)["code"] == "conflict"
    assert json.loads(raw)["field"] == "listen"
    status, _, raw = _request(api, "PUT", "/v1/routes/192.0.2.1:80", {"service": "web"})
    assert status == 409, raw  # not an address of this host
    assert key not in _request(api, "GET", "/v1/routes")[2].decode()


# --routes-file: validated whole, applied all or nothing, on SIGHUP as at start


def _listed(process: PilotfishProcess) -> set[str]:
    _, _, raw = _request(process.listening["lb API"], "GET", "/v1/routes")
    return {route["route"] for route in json.loads(raw)["routes"]}


def _accepts(port: int) -> bool:
    """Whether something listens on the port (a route without instances resets the client,
    sometimes before connect() returns)."""
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return True
    except ConnectionRefusedError:
        return False
    except ConnectionResetError:
        return True


def _logged(process: PilotfishProcess, text: str, after: int, timeout: float = 5.0) -> str:
    """The first line from index `after` on that contains `text` (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in process.lines[after:]:
            if text in line:
                return line
        assert time.monotonic() < deadline, f"never logged {text!r}: {process.lines[after:]}"
        time.sleep(0.02)


def _hup(process: PilotfishProcess, routes: Path, text: str) -> int:
    routes.write_text(text)
    mark = len(process.lines)
    process.process.send_signal(signal.SIGHUP)
    return mark


def test_sighup_validates_the_whole_file_and_applies_all_or_nothing(tmp_path: Path) -> None:
    a, b, c, d = (free_port() for _ in range(4))
    routes = tmp_path / "routes"
    good = f"{HOST}:{a}=web\n{HOST}:{b}=web?max_connections=5\n"
    routes.write_text(good)
    lb = start_pilotfish("lb", "--registry", "memory://", "--lb-api", f"{HOST}:0",
                         "--routes-file", str(routes), expect=("lb API",))
    running = {f"{HOST}:{a}=web", f"{HOST}:{b}=web?max_connections=5"}
    try:
        assert _listed(lb) == running
        bad_files = {
            f"{HOST}:{c}=web\n{HOST}:{b}=web?max_connections=²\n": f"{routes}:2:",
            f"{HOST}:{c}=web\n\n{HOST}:{b}=web?max_connections=٣\n": f"{routes}:3:",
            f"localhost:{c}=web\n{HOST}:{c}=web\n": f"{routes}:1:",
            f"{HOST}:{c}=web\n0.0.0.0:{c}=web\n": f"{routes}:2:",
            f"{HOST}:{c}=web\n{HOST}:{c}=db\n": f"{routes}:2:",
            f"{HOST}:{c}=web?proxy_protocol=\n": f"{routes}:1:",
            f"{HOST}:0=web\n": f"{routes}:1:",
            f"127.1:{c}=web\n": f"{routes}:1:",
        }
        for text, where in bad_files.items():
            mark = _hup(lb, routes, text)
            line = _logged(lb, "routes file not reloaded", mark)
            assert where in line and len(line) < 1000, line
            assert _listed(lb) == running, text
            assert not _accepts(c)

        with socket.socket() as taken:  # c binds, d cannot: neither is applied
            taken.bind((HOST, d))
            taken.listen()
            mark = _hup(lb, routes, f"{HOST}:{a}=db\n{HOST}:{c}=web\n{HOST}:{d}=web\n")
            line = _logged(lb, "routes file not reloaded", mark)
            assert f"{routes}:3:" in line and f"{HOST}:{d}" in line, line
            assert _listed(lb) == running
            assert not _accepts(c) and _accepts(a) and _accepts(b)

        mark = _hup(lb, routes, f"{HOST}:{a}=db\n{HOST}:{c}=web\n")
        line = _logged(lb, "routes file reloaded", mark)
        assert "1 added, 1 changed, 1 removed" in line and "2 routes running" in line, line
        assert _listed(lb) == {f"{HOST}:{a}=db", f"{HOST}:{c}=web"}
        assert _accepts(c) and not _accepts(b)
        assert lb.process.poll() is None
    finally:
        lb.stop()
    log = "".join(lb.lines)
    assert "Traceback" not in log and "never retrieved" not in log, log


@pytest.mark.parametrize(("line", "message"), [
    ("{host}:{port}=web?max_connections=²", "max_connections"),
    ("{host}:{port}=web?max_connections=٣", "max_connections"),
    ("localhost:{port}=web", "not an IP address"),
])
def test_a_bad_file_at_start_names_the_file_and_line(tmp_path: Path, line: str,
                                                     message: str) -> None:
    routes = tmp_path / "routes"
    routes.write_text("# routes\n" + line.format(host=HOST, port=free_port()) + "\n")
    result = subprocess.run([sys.executable, "-m", "pilotfish", "lb", "--lb-api", "off",
                             "--routes-file", str(routes)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"{routes}:2:" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_an_unexpected_failure_is_one_short_log_line_and_no_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """The ASGI server's receive() failing mid-body (a broken connection, a server bug)."""
    from pilotfish.catalog.backends import open_catalog
    from pilotfish.lb.api import RoutesApp
    from pilotfish.lb.balancer import LoadBalancer
    from pilotfish.stack import Stack

    catalog = await open_catalog("memory://")
    app = RoutesApp(LoadBalancer(Stack(catalog), []))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise RuntimeError("connection state broken " + "x" * 10_000)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "PUT", "path": f"/v1/routes/{HOST}:9", "headers": []}
    with caplog.at_level("ERROR"):
        await app(scope, receive, send)
    await catalog.close()
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": "internal error", "code": "internal"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and len(lines[0]) < 300 and "RuntimeError" in lines[0], lines
    assert not any(r.exc_info for r in caplog.records)
