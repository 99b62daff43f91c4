"""?filter= from a hostile client (issue 21, items 1 and 5): RE2 in linear time, every bad input a
400 naming `filter`, and no filter holding the event loop that DNS, the LB and the API share.

The process tests run `pilotfish up` (API and DNS on one loop) and time DNS answers while the
registry evaluates what a client sent; the in-process ones bound a single search, the work per
answer and the loop's lateness, and fuzz the language (no exception but FilterError).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import httpx
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.registry.consul.filter import FILTER_BUDGET, FilterError, compile_filter
from pilotfish.registry.consul.regex import MAX_PROGRAM, LinearRegex, PatternError
from tests.fixtures.process import PilotfishProcess, start_pilotfish

DOMAIN = "pilotfish.test"
ISSUE_FILTER = 'ServiceID matches ".*.*.*.*.*.*.*.*.*#"'
ISSUE_ID = "web-0123456789abcdef0123456789abc"  # 33 characters, as in the issue
LONG_VALUE = "a" * 512  # the longest value a registrant can put in meta
STALL_LIMIT = 0.05  # what a DNS answer may take while the registry works for someone else
OUTLIER_LIMIT = 0.25  # on a loaded 2-core machine the OS alone sometimes adds tens of ms


@dataclass
class Stack:
    """`pilotfish up` with its API client and DNS address."""

    process: PilotfishProcess
    http: httpx.Client
    dns_host: str
    dns_port: int

    def dns_latency(self, name: str) -> float:
        """Seconds one UDP SRV query for `name` took (dnspython), failing on no answer."""
        query = dns.message.make_query(name, dns.rdatatype.SRV)
        started = time.perf_counter()
        dns.query.udp(query, self.dns_host, port=self.dns_port, timeout=2.0)
        return time.perf_counter() - started


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """One `pilotfish up` (memory backend) for the module; tests use their own service names."""
    process = start_pilotfish("up", "--api", "127.0.0.1:0", "--dns", "127.0.0.1:0",
                              "--domain", DOMAIN, expect=("registry API", "dns"))
    host, _, port = process.listening["dns"].rpartition(":")
    http = httpx.Client(base_url=process.api, timeout=30)
    try:
        yield Stack(process, http, host, int(port))
    finally:
        http.close()
        process.stop()
    assert not process.crashes(), process.crashes()


def _register_many(stack: Stack, service: str, count: int, **fields: Any) -> None:
    """`count` instances of `service` on one lease, over a few keep-alive connections."""
    lease = stack.http.post("/v1/leases", json={"ttl": 600, "owner": "hostile"}).json()["id"]

    def put(numbers: range) -> None:
        with httpx.Client(base_url=stack.process.api, timeout=30) as client:
            for n in numbers:
                response = client.put(
                    f"/v1/services/{service}/instances/{service}-{n:05d}",
                    json={"address": f"10.{n // 250}.{n % 250}.1", "port": 8080,
                          "lease": lease, **fields})
                assert response.status_code in (200, 201), response.text

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, [range(start, count, 4) for start in range(4)]))


def _while_dns_is_asked(stack: Stack, name: str,
                        request: Any) -> tuple[Any, list[float]]:
    """Run `request()` in a thread and ask DNS for `name` until it returns: (result, latencies)."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(request()))
    latencies = []
    worker.start()
    while worker.is_alive():
        latencies.append(stack.dns_latency(name))
        time.sleep(0.002)
    worker.join()
    return outcome[0], latencies


def _assert_answered_at_once(latencies: list[float]) -> None:
    """DNS answered within STALL_LIMIT: all but 1 in 50 (the scheduler's), none past 250 ms."""
    slow = [seconds for seconds in latencies if seconds > STALL_LIMIT]
    assert len(slow) <= max(1, len(latencies) // 50), latencies
    assert max(latencies) < OUTLIER_LIMIT, latencies


def test_the_issue_request_answers_at_once_and_dns_never_waits(stack: Stack) -> None:
    stack.http.put(f"/v1/services/web/instances/{ISSUE_ID}",
                   json={"address": "127.0.0.1", "port": 8080, "ttl": 60}).raise_for_status()
    path = "/v1/catalog/service/web?filter=" + urllib.parse.quote(ISSUE_FILTER)
    matching = path.replace("%23", "c")  # ".*…c": the id ends with c

    def ask() -> list[tuple[int, Any, float]]:
        answers = []
        with httpx.Client(base_url=stack.process.api, timeout=30) as client:
            for _ in range(30):
                for url in (path, matching):
                    started = time.perf_counter()
                    response = client.get(url)
                    answers.append((response.status_code, response.json(),
                                    time.perf_counter() - started))
        return answers

    answers, latencies = _while_dns_is_asked(stack, f"web.service.{DOMAIN}", ask)
    assert [(status, body) for status, body, _ in answers[:2]] == [
        (200, []), (200, [answers[1][1][0]])]
    assert answers[1][1][0]["ServiceID"] == ISSUE_ID
    assert all(status == 200 for status, _, _ in answers)
    slowest = max(seconds for _, _, seconds in answers)
    print(f"\nissue request: median {statistics.median(s for *_, s in answers) * 1e3:.1f} ms, "
          f"slowest {slowest * 1e3:.1f} ms; DNS during it: {len(latencies)} queries, "
          f"max {max(latencies) * 1e3:.1f} ms")
    assert slowest < 1.0
    _assert_answered_at_once(latencies)


def _worst_regex_filter() -> str:
    """4,096 characters of the costliest pattern RE2 still accepts, against 512-char values."""
    clause = 'Service.Meta.k matches "(?:a*){75}b"'
    clauses = [clause]
    while len(" or ".join([*clauses, clause])) <= 4096:
        clauses.append(clause)
    return " or ".join(clauses)


def _worst_cheap_filter() -> str:
    """4,096 characters of the most operands the language allows, none of them matching."""
    clause = 'Service.ID=="z"'
    clauses = [clause]
    while len(" or ".join([*clauses, clause])) <= 4096:
        clauses.append(clause)
    return " or ".join(clauses)


def test_the_worst_filter_over_2000_instances_never_holds_the_loop(stack: Stack) -> None:
    _register_many(stack, "big", 2000, meta={"k": LONG_VALUE})
    stack.http.put("/v1/services/probe/instances/probe-1",
                   json={"address": "127.0.0.2", "port": 80, "ttl": 60}).raise_for_status()
    probe = f"probe.service.{DOMAIN}"
    assert len(stack.http.get("/v1/health/service/big").json()) == 2000  # model and items made
    for expression in (_worst_regex_filter(), _worst_cheap_filter()):
        assert len(expression) <= 4096
        url = "/v1/health/service/big?filter=" + urllib.parse.quote(expression)

        def ask(url: str = url) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = stack.http.get(url)
            return response, time.perf_counter() - started

        (response, seconds), latencies = _while_dns_is_asked(stack, probe, ask)
        print(f"\n{expression[:30]}… ({expression.count(' or ') + 1} operands) over 2000: "
              f"{response.status_code} in {seconds:.2f} s; DNS meanwhile: {len(latencies)} "
              f"queries, median {statistics.median(latencies) * 1e3:.1f} ms, "
              f"max {max(latencies) * 1e3:.1f} ms")
        if response.status_code == 400:  # valid, but more work than one answer may take
            assert response.text.startswith("filter: evaluating it over 2000 items took more")
            assert seconds < 10 * FILTER_BUDGET  # a CPU budget: wall time depends on the load
        else:
            assert response.status_code == 200 and response.json() == [], response.text[:300]
        _assert_answered_at_once(latencies)


@pytest.mark.parametrize("expression, complaint", [
    ('ServiceID matches "a{4294967296}"', "invalid repeat count {4294967296}"),
    ('ServiceID matches "a{1,' + "9" * 4000 + '}"', "invalid repeat count"),
    ('ServiceID matches "' + "(" * 1000 + "a" + ")" * 1000 + '"', "more than 64 nested groups"),
    ("(" * 1000 + 'ServiceID == "x"' + ")" * 1000, "more than 64 nested"),
    ('ServiceID matches "(?P<x>w)(?P=x)"', "RE2 has no backreferences"),
    ('ServiceID matches "(?<=a)b"', "RE2 has no lookarounds"),
    ('ServiceID matches "\\ud800"', "not valid UTF-8"),
    ('ServiceID matches ".{64}"', "516 RE2 instructions, more than 500"),
    ('ServiceID matches "\\\\pL{9}"', "too large for RE2's memory budget"),
    ('ServiceID matches "x{1000}{1000}"', "RE2 refuses it: bad repetition operator"),
])
def test_bad_filters_are_400s_naming_filter(stack: Stack, expression: str,
                                             complaint: str) -> None:
    lines_before = len(stack.process.lines)
    response = stack.http.get("/v1/catalog/service/web", params={"filter": expression})
    assert response.status_code == 400, response.text[:300]
    assert "filter: " in response.text and complaint in response.text, response.text[:300]
    assert len(response.text) < 1024
    time.sleep(0.05)
    logged = "".join(stack.process.lines[lines_before:])
    assert "Traceback" not in logged and "Error parsing" not in logged, logged[:2000]


def test_re2_is_the_engine_and_has_no_fallback() -> None:
    # what Python's re takes 2^40 steps for answers at once: RE2 alone is in use
    started = time.perf_counter()
    assert not LinearRegex("(a+)+$").search("a" * 40 + "!")
    assert LinearRegex("(x+x+)+y").search("x" * 5000 + "y")
    assert time.perf_counter() - started < 0.05
    quiet = re2.Options()
    quiet.log_errors = False
    with pytest.raises(re2.error):  # the binding itself refuses what RE2 refuses
        re2.compile("(a)\\1", quiet)
    for refused in ("(a)\\1", "(?=a)", "(?P<x>w)(?P=x)"):
        with pytest.raises(PatternError):
            LinearRegex(refused)


def _search_seconds(pattern: str, text: str, repeat: int = 3) -> float:
    regex = LinearRegex(pattern)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        regex.search(text)
        best = min(best, time.perf_counter() - started)
    return best


def test_the_issue_pattern_is_linear_not_quadratic() -> None:
    # longer patterns of the same shape, and longer texts: the time stays flat / grows linearly
    by_pattern = {n: _search_seconds(".*" * n + "#", ISSUE_ID) for n in (9, 200, 2000)}
    by_text = {n: _search_seconds(".*" * 2000 + "#", "x" * n) for n in (500, 5000, 50000)}
    print(f"\n.*×n on 33 chars: {({n: f'{s * 1e6:.0f} µs' for n, s in by_pattern.items()})}; "
          f".*×2000 on n chars: {({n: f'{s * 1e6:.0f} µs' for n, s in by_text.items()})}")
    assert max(by_pattern.values()) < 0.002
    assert by_text[50000] < 0.01
    assert by_text[50000] < 30 * by_text[5000] + 0.001  # 10x the text, not 100x the time


NASTY = ["(?:a*){%d}b", "(?:a?){%d}a{%d}", "(?:[a-z]?){%d}a{%d}", "(.*a){%d}", "(?:a|aa|.){%d}b",
         "(?s:.){0,%d}b", "(?:.*.){%d}x", "(?i:.*[a-z]){%d}x", "(?:(?:a*b*)*c){%d}"]


def test_one_search_is_bounded_for_every_pattern_re2_and_the_limits_accept() -> None:
    worst = (0.0, "")
    for shape in NASTY:
        for count in range(5, 400, 10):
            pattern = shape.replace("%d", str(count))
            try:
                LinearRegex(pattern)
            except PatternError:
                continue
            for text in (LONG_VALUE, "ab " * 170, "é" * 512):
                worst = max(worst, (_search_seconds(pattern, text, 1), pattern))
    print(f"\nslowest single search (program <= {MAX_PROGRAM}, 512 chars): "
          f"{worst[0] * 1e3:.2f} ms for {worst[1]!r}")
    assert worst[0] < 0.01  # ~2 ms measured; generous for a loaded machine


def _ticking_while(work: Any) -> tuple[Any, list[float]]:
    """Run coroutine `work` beside a 1 ms ticker: (its result, the ticker's lateness)."""

    async def main() -> tuple[Any, list[float]]:
        lateness = [0.0]
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness.append(time.perf_counter() - started - 0.001)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.01)
        try:
            result = await work
        finally:
            done.set()
            await ticker
        return result, lateness

    return asyncio.run(main())


def _items(count: int) -> list[dict[str, Any]]:
    return [{"Service": {"ID": f"big-{n:05d}", "Meta": {"k": LONG_VALUE}}}
            for n in range(count)]


def test_selection_over_2000_items_yields_the_loop_and_stops_at_its_budget() -> None:
    items = _items(2000)
    costly = compile_filter(_worst_regex_filter(), items[0])
    started = time.perf_counter()
    with pytest.raises(FilterError, match="took more than 0.05 s of CPU"):
        _ticking_while(costly.select(items, budget=0.05))
    assert time.perf_counter() - started < 5

    cheap = compile_filter(_worst_cheap_filter(), items[0])
    started = time.perf_counter()
    kept, lateness = _ticking_while(cheap.select(items))
    took = time.perf_counter() - started
    print(f"\n{_worst_cheap_filter().count(' or ') + 1} operands over 2000 items: "
          f"{took * 1e3:.0f} ms, loop lateness at most {max(lateness) * 1e3:.1f} ms")
    assert kept == []
    _assert_answered_at_once(lateness)


def test_select_keeps_what_the_item_test_keeps() -> None:
    items = [{"ServiceID": f"w-{n}", "ServiceMeta": {"k": str(n % 7)}} for n in range(300)]
    expression = ('(ServiceMeta.k == "3" or ServiceID matches "1$") and not '
                  '(ServiceID contains "9" or ServiceMeta.k == "5")')
    keep = compile_filter(expression, items[0])
    selected, _ = _ticking_while(keep.select(items))
    assert selected == [item for item in items if keep(item)] and selected


# fuzzing: the language and RE2 patterns, in process and over HTTP

SELECTORS = ["ServiceID", "ServiceName", "ServiceTags", "ServiceMeta.k", 'ServiceMeta["a.b"]',
             "ServicePort", "Node", "NodeMeta", "ServiceEnableTagOverride", "Nope", "Service.ID"]
OPERATORS = ["==", "!=", "contains", "not contains", "matches", "not matches", "is empty",
             "is not empty", "in", ">", ""]
REGEX_ALPHABET = "()[]{}*+?|\\^$.,:=!<>P0123456789aAbzQEpLx-_ #é\u200b\"`"


def _regexes() -> st.SearchStrategy[str]:
    pieces = st.sampled_from(["(", ")", "(?:", "(?i)", "(?P<n>", "(?=", "(?P=n)", "\\1", "[",
                              "]", "[^", "[:alpha:]", "{", "}", "{2,", "{1000}", "{1001}",
                              "{99999999999}", "*", "+", "?", "*?", "|", "\\", "\\Q", "\\E",
                              "\\pL", "\\p{Greek}", "\\x{41}", "\\b", "\\z", "\\Z", ".", "a",
                              "é", "^", "$", "\\d"])
    return st.one_of(st.lists(pieces, max_size=20).map("".join),
                     st.text(REGEX_ALPHABET, max_size=40))


def _values() -> st.SearchStrategy[str]:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return st.one_of(_regexes().map(quoted), _regexes().map(lambda t: f"`{t}`"),
                     st.sampled_from(["1", "-2.5", "true", "x", "a.b", '"', "`", '"\\ud800"',
                                      "99999999999999999999", '["x"]']))


def _filters() -> st.SearchStrategy[str]:
    atom = st.builds(lambda s, o, v: f"{s} {o} {v}".strip(), st.sampled_from(SELECTORS),
                     st.sampled_from(OPERATORS), _values())
    tree = st.recursive(atom, lambda inner: st.one_of(
        st.builds(lambda a, b, j: f"{a} {j} {b}", inner, inner, st.sampled_from(["and", "or"])),
        inner.map(lambda e: f"not {e}"), inner.map(lambda e: f"({e})")), max_leaves=6)
    noise = st.lists(st.sampled_from([*"()\"`[]. !=\\", " and ", " or ", "not ", " matches "]),
                     max_size=30).map("".join)
    return st.one_of(tree, noise, st.builds(lambda d: "(" * d + "ServiceID == x" + ")" * d,
                                            st.integers(60, 70)))


EXAMPLE = {"ServiceID": "web-1", "ServiceName": "web", "ServiceTags": ["a", "b"],
           "ServiceMeta": {"k": "v", "a.b": "x"}, "ServicePort": 80, "Node": "n1",
           "NodeMeta": {}, "ServiceEnableTagOverride": False}

VARIED = [EXAMPLE, {**EXAMPLE, "ServiceID": "a" * 40, "ServiceTags": [], "ServiceMeta": {}},
          {**EXAMPLE, "ServiceID": "é1", "ServicePort": 1, "NodeMeta": {"k": "v"}},
          {**EXAMPLE, "ServiceID": "", "ServiceEnableTagOverride": True, "Node": "x"}]


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_filters())
def test_fuzzed_filters_compile_or_say_why_in_process(expression: str) -> None:
    try:
        keep = compile_filter(expression, EXAMPLE)
    except FilterError as exc:
        assert str(exc) and len(str(exc)) < 600
        return
    started = time.perf_counter()
    assert isinstance(keep(EXAMPLE), bool)
    assert time.perf_counter() - started < 0.05
    selected = asyncio.run(keep.select(VARIED))  # one operand at a time over many: the same
    assert selected == [item for item in VARIED if keep(item)]


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_filters())
def test_fuzzed_filters_over_http_never_get_a_5xx(stack: Stack, expression: str) -> None:
    for path in ("/v1/catalog/service/web", "/v1/health/service/web", "/v1/catalog/services"):
        response = stack.http.get(path, params={"filter": expression})
        assert response.status_code in (200, 400), (expression, response.text[:300])
        assert response.status_code == 200 or re.search(r"filter", response.text)
