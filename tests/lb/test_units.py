"""Route parsing, PROXY headers and pool rules (diff, drain, ejection, cap, panic) in-process."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import pytest

from pilotfish.catalog.model import Instance
from pilotfish.config import ConfigError, HostPort
from pilotfish.lb.health import record
from pilotfish.lb.pickers import RoundRobin
from pilotfish.lb.pool import Pool
from pilotfish.lb.proxy_protocol import V2_SIGNATURE, header
from pilotfish.lb.routes import Route, parse_route, parse_routes_file, route_from_json
from pilotfish.lb.settings import LbSettings


def test_parse_route_forms() -> None:
    route = parse_route("127.0.0.1:9000=web")
    assert route == Route(HostPort("127.0.0.1", 9000), "web")
    route = parse_route("[::1]:9001=Web.v2?balance=hash&proxy_protocol=v2&max_connections=5")
    assert (route.listen, route.service, route.tag, route.balance, route.proxy_protocol,
            route.max_connections) == (HostPort("::1", 9001), "web", "v2", "hash", "v2", 5)
    assert str(route) == "[::1]:9001=web.v2?balance=hash&proxy_protocol=v2&max_connections=5"
    assert parse_route(str(route)) == route


@pytest.mark.parametrize(("text", "message"), [
    ("web", "not HOST:PORT=SERVICE"),
    ("127.0.0.1:9000=", "not HOST:PORT=SERVICE"),
    ("127.0.0.1:99999=web", "not HOST:PORT"),
    ("127.0.0.1:9000=we_b", "not a DNS label"),
    ("127.0.0.1:9000=web?balance=random", "balance: 'random'"),
    ("127.0.0.1:9000=web?max_connections=²", "max_connections: '²'"),
    ("127.0.0.1:9000=web?max_connections=٣", "max_connections: '٣'"),
    ("127.0.0.1:9000=web?proxy_protocol=", "proxy_protocol: ''"),
    ("127.0.0.1:0=web", "port 0"),
    ("localhost:9000=web", "not an IP address"),
    ("127.1:9000=web", "not an IP address"),
    ("::1:9000=web", "brackets"),
    ("127.0.0.1:9000=web?proxy_protocol=v3", "proxy_protocol"),
    ("127.0.0.1:9000=web?max_connections=-1", "max_connections"),
    ("127.0.0.1:9000=web?colour=blue", "unknown option 'colour'"),
    ("127.0.0.1:9000=web?balance=hash&balance=p2c", "twice"),
])
def test_parse_route_rejects_with_the_flag_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_route(text)
    assert str(error.value).startswith("--route")


def test_routes_file_and_json() -> None:
    routes = parse_routes_file("# comment\n127.0.0.1:9000=web  # trailing\n\n"
                               "127.0.0.1:9001=db?balance=least_conn\n", "f")
    assert [str(r) for r in routes] == ["127.0.0.1:9000=web",
                                        "127.0.0.1:9001=db?balance=least_conn"]
    with pytest.raises(ConfigError, match="f:2: listen: 127.0.0.1:9000 is routed twice"):
        parse_routes_file("127.0.0.1:9000=web\n127.0.0.1:9000=db\n", "f")
    with pytest.raises(ConfigError, match="f:3: listen: 0.0.0.0:9000 overlaps 127.0.0.1:9000"):
        parse_routes_file("127.0.0.1:9000=web\n[::]:9000=web\n0.0.0.0:9000=db\n", "f")
    with pytest.raises(ConfigError, match="^f:1: .*; f:2: .*; f:3: .*; and 2 more$"):
        parse_routes_file("x\n" * 7 + "127.0.0.1:9000=web\n", "f")
    assert [str(r) for r in parse_routes_file("[0::1]:09000=web\n", "f")] == ["[::1]:9000=web"]
    with pytest.raises(ConfigError, match="^f:1: "):
        parse_routes_file("nonsense\n", "f")
    route = route_from_json("127.0.0.1:9000", {"service": "web", "tag": "v1",
                                               "balance": "weighted"})
    assert str(route) == "127.0.0.1:9000=web.v1?balance=weighted"
    for body, field in [({"service": 5}, "service"), ([], "body"),
                        ({"service": "web", "balance": "x"}, "balance"),
                        ({"service": "web", "max_connections": "3"}, "max_connections"),
                        ({"service": "web", "proxy_protocol": 0}, "proxy_protocol")]:
        with pytest.raises(ConfigError, match=f"^{field}"):
            route_from_json("127.0.0.1:9000", body)


def test_proxy_protocol_headers() -> None:
    assert header("v1", ("10.1.2.3", 40000), ("10.0.0.1", 80)) == \
        b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n"
    assert header("v1", ("::1", 40000, 0, 0), ("::2", 80, 0, 0)) == \
        b"PROXY TCP6 ::1 ::2 40000 80\r\n"
    v2 = header("v2", ("10.1.2.3", 40000), ("10.0.0.1", 80))
    assert v2 == V2_SIGNATURE + b"\x21\x11\x00\x0c" + socket.inet_aton("10.1.2.3") + \
        socket.inet_aton("10.0.0.1") + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    v6 = header("v2", ("::1", 1, 0, 0), ("::2", 2, 0, 0))
    assert v6[12:16] == b"\x21\x21\x00\x24" and len(v6) == 16 + 36


def _instance(n: int, **fields: object) -> Instance:
    return Instance(service="web", id=f"w{n}", address="127.0.0.1", port=9000 + n,
                    lease="l", **fields)  # type: ignore[arg-type]


async def test_pool_diff_keeps_state_and_drains() -> None:
    pool = Pool(LbSettings(drain_timeout=0.2))
    pool.update([_instance(1), _instance(2)])
    first = pool.backends[("127.0.0.1", 9001)]
    first.total, first.healthy = 7, False
    pool.update([_instance(1, weight=5, tags=("x",)), _instance(2), _instance(3)])
    assert pool.backends[("127.0.0.1", 9001)] is first
    assert (first.total, first.healthy, first.weight) == (7, False, 5)
    pool.update([_instance(1, health="critical"), _instance(3)])
    assert ("127.0.0.1", 9002) not in pool.backends  # no connections: gone at once
    assert [b.port for b in pool.serving()] == [9003]  # critical: no new connections
    held = pool.backends[("127.0.0.1", 9003)]
    closed: list[bool] = []

    class Open:  # what the drain timer closes; a real Connection leaves its backend on close
        def close(self) -> None:
            closed.append(True)
            held.connections.discard(self)  # type: ignore[arg-type]

    held.connections.add(Open())  # type: ignore[arg-type]
    pool.update([])
    assert held.draining and pool.backends[held.key] is held and not pool.serving()
    pool.update([_instance(3)])  # back before the drain ended: the same backend again
    assert not held.draining and held.drain_timer is None
    pool.update([])
    await asyncio.sleep(0.3)
    assert closed == [True] and held.key not in pool.backends  # drain timeout passed


def test_ejection_grows_is_capped_and_panic_uses_all() -> None:
    pool = Pool(LbSettings(eject_after=2, eject_base=1.0, eject_max=4.0, max_ejected=0.5,
                           panic_below=0.5))
    pool.update([_instance(n) for n in range(1, 5)])
    one, two, three, four = pool.backends.values()
    pool.connect_failed(one)
    assert not one.ejected(time.monotonic())
    pool.connect_failed(one)
    assert one.ejected(time.monotonic()) and one.eject_backoff == 1.0
    assert one not in pool.candidates()
    for backoff in (2.0, 4.0, 4.0):  # keeps failing after each ejection: backoff grows to max
        one.ejected_until = 0
        pool.connect_failed(one)
        assert one.eject_backoff == backoff
    for _ in range(3):
        pool.connect_failed(two)
        pool.connect_failed(three)  # over the 50% cap: counted, not ejected
    now = time.monotonic()
    assert two.ejected(now) and not three.ejected(now) and three.failed == 3
    assert pool.candidates() == [three, four] and not pool.panic
    assert not record(three, False, pool.settings)  # active checks: fall=2 ...
    assert record(three, False, pool.settings)  # ... then down: 1 of 4 healthy, panic
    pool.version += 1  # what check_forever does when a verdict flips
    assert pool.candidates() == [one, two, three, four] and pool.panic
    pool.connect_succeeded(one)
    assert one.failures == 0 and one.eject_backoff == 0


def test_round_robin_cursor_survives_pool_updates() -> None:
    pool = Pool(LbSettings())
    pool.update([_instance(1), _instance(2), _instance(3)])
    picker = RoundRobin()
    picks = [picker.pick(pool.candidates(), "c", ()) for _ in range(3)]
    pool.update([replace(_instance(n), weight=2) for n in (1, 2, 3)])
    picks += [picker.pick(pool.candidates(), "c", ()) for _ in range(3)]
    assert [p.port for p in picks[:3]] == [p.port for p in picks[3:]]  # type: ignore[union-attr]
    assert len({p.port for p in picks[:3]}) == 3  # type: ignore[union-attr]
