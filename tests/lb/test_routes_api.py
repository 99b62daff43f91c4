"""Routes at run time: the /v1/routes API, SIGHUP reload of --routes-file, and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

from tests.fixtures.process import start_pilotfish
from tests.fixtures.servers import HOST, free_port
from tests.lb.conftest import Backend, Lb, connect, read_exactly, start_lb
from tests.lb.load import exchange


async def _serves(port: int) -> bool:
    try:
        return await exchange(port, b"ping", half_close=True, timeout=3) == "b0"
    except ConnectionRefusedError:
        return False


async def _eventually(port: int, serving: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await _serves(port) != serving:
        assert time.monotonic() < deadline, f"port {port} never {'served' if serving else 'closed'}"
        await asyncio.sleep(0.05)


async def test_routes_api_adds_changes_and_removes_routes(backends: list[Backend]) -> None:
    lb = start_lb("web")
    try:
        lb.register("web", "w0", backends[0].port)
        lb.register("other", "o0", backends[0].port)
        lb.register("other", "o1", backends[1].port)
        port = free_port()
        key = f"{HOST}:{port}"
        response = lb.lb_api.put(f"/v1/routes/{key}", json={"service": "other",
                                                             "balance": "round_robin"})
        assert response.status_code == 201, response.text
        assert response.json()["route"] == f"{key}=other?balance=round_robin"
        names = {await exchange(port, b"x", True) for _ in range(4)}
        assert names == {"b0", "b1"}
        response = lb.lb_api.put(f"/v1/routes/{key}", json={"service": "web"})
        assert response.status_code == 200  # changed in place: the listener stays
        assert {await exchange(port, b"x", True) for _ in range(4)} == {"b0"}
        listed = lb.lb_api.get("/v1/routes").json()["routes"]
        assert sorted(r["route"] for r in listed) == sorted(
            [f"{key}=web", f"{HOST}:{lb.routes['web']}=web"])
        assert lb.lb_api.get(f"/v1/routes/{key}").json()["service"] == "web"

        for body, field in [({"service": "bad_name"}, "service"), ({"balance": "x"}, "service"),
                            ({"service": "web", "balance": "x"}, "balance")]:
            response = lb.lb_api.put(f"/v1/routes/{key}", json=body)
            assert response.status_code == 400 and response.json()["field"] == field, body
        assert lb.lb_api.put("/v1/routes/nonsense", json={"service": "web"}).status_code == 400
        taken = lb.lb_api.put(f"/v1/routes/{HOST}:{lb.process.api.rpartition(':')[2]}",
                              json={"service": "web"})
        assert taken.status_code == 409 and taken.json()["field"] == "listen"
        assert taken.json()["code"] == "conflict"

        held = await connect(port)  # open through the route, then the route goes
        assert await read_exactly(held, 3) == b"b0\n"
        assert lb.lb_api.delete(f"/v1/routes/{key}").status_code == 204
        assert lb.lb_api.get(f"/v1/routes/{key}").status_code == 404
        assert lb.lb_api.delete(f"/v1/routes/{key}").status_code == 404
        assert not await _serves(port)  # stopped accepting ...
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(held, b"still here")  # ... while this one drains
        assert await read_exactly(held, 10) == b"still here"
        held.close()
        assert await _serves(lb.routes["web"])  # the other listener was never touched
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


async def test_sighup_rereads_the_routes_file(tmp_path: Path, backends: list[Backend]) -> None:
    first, second, kept = free_port(), free_port(), free_port()
    routes = tmp_path / "routes"
    routes.write_text(f"{HOST}:{first}=web\n{HOST}:{kept}=web  # stays\n")
    lb = start_lb(extra=("--routes-file", str(routes)))
    try:
        lb.register("web", "w0", backends[0].port)
        await _eventually(first, True)
        kept_conn = await connect(kept)
        assert await read_exactly(kept_conn, 3) == b"b0\n"
        routes.write_text(f"{HOST}:{second}=web\n{HOST}:{kept}=web\n")
        lb.process.process.send_signal(signal.SIGHUP)
        await _eventually(second, True)
        await _eventually(first, False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(kept_conn, b"same")  # the unchanged route kept its clients
        assert await read_exactly(kept_conn, 4) == b"same"
        kept_conn.close()

        routes.write_text("this is not a route\n")  # a broken file changes nothing
        lb.process.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "routes file not reloaded" not in "".join(lb.process.lines):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await _serves(second) and await _serves(kept)
    finally:
        lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


async def test_sigterm_stops_accepting_and_lets_connections_finish(
        backends: list[Backend]) -> None:
    lb: Lb = start_lb("web", extra=("--lb-stop-timeout", "10"))
    lb.register("web", "w0", backends[0].port)
    port = lb.routes["web"]
    await _eventually(port, True)
    held = await connect(port)
    try:
        assert await read_exactly(held, 3) == b"b0\n"
        lb.process.process.send_signal(signal.SIGTERM)
        await _eventually(port, False)  # no new clients
        loop = asyncio.get_running_loop()
        for n in range(5):  # the open connection carries on
            await loop.sock_sendall(held, b"%d" % n)
            assert await read_exactly(held, 1) == b"%d" % n
            await asyncio.sleep(0.1)
        assert lb.process.process.poll() is None
    finally:
        held.close()
    assert lb.process.process.wait(5) == 0  # exits once the last connection has gone
    lb.close()
    assert not lb.process.crashes(), lb.process.crashes()


def test_lb_command_alone_and_bad_routes_exit_with_a_message() -> None:
    process = start_pilotfish("lb", "--registry", "memory://", "--lb-api", f"{HOST}:0",
                              "--route", f"{HOST}:{free_port()}=web",
                              expect=("lb API", "lb route to web"))
    assert process.stop() == 0
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pilotfish", "lb", "--route", "web"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--route: 'web' is not HOST:PORT=SERVICE" in result.stderr
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "pilotfish", "lb", "--lb-api", "off",
                                 "--route", f"{HOST}:{port}=web"],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and f"cannot listen on {HOST}:{port}" in result.stderr
    assert "Traceback" not in result.stderr
