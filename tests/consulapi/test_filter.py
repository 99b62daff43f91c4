"""The ?filter= language: what it matches, and a clear error for what pilotfish cannot evaluate."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.registry.consul.filter import FilterError, compile_filter

EXAMPLE: dict[str, Any] = {
    "Node": {"Node": "host-a", "Meta": {"rack": "r1"}},
    "Service": {"ID": "web-1", "Tags": ["prod", "v1"], "Meta": {"env": "qa", "a.b": "x"},
                "Port": 8080, "EnableTagOverride": False, "Weights": {"Passing": 1}},
    "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
               {"CheckID": "service:web-1", "Status": "warning"}],
}
OTHER: dict[str, Any] = {
    "Node": {"Node": "host-b", "Meta": {}},
    "Service": {"ID": "web-2", "Tags": [], "Meta": {"env": "live"}, "Port": 9090,
                "EnableTagOverride": False, "Weights": {"Passing": 3}},
    "Checks": [{"CheckID": "serfHealth", "Status": "passing"}],
}


def matching(expression: str) -> list[str]:
    keep = compile_filter(expression, EXAMPLE)
    return [item["Service"]["ID"] for item in (EXAMPLE, OTHER) if keep(item)]


@pytest.mark.parametrize("expression, expected", [
    ("", ["web-1", "web-2"]),
    ('Service.Tags contains "prod"', ["web-1"]),
    ('Service.Tags not contains "prod"', ["web-2"]),
    ('"v1" in Service.Tags', ["web-1"]),
    ("v1 in Service.Tags", ["web-1"]),
    ('"v1" not in Service.Tags', ["web-2"]),
    ('Service.Meta.env == "live"', ["web-2"]),
    ("Service.Meta.env == `qa`", ["web-1"]),
    ('Service.Meta["a.b"] == "x"', ["web-1"]),
    ('Service.Meta.nope != "x"', ["web-1", "web-2"]),
    ('Service.Meta.nope == "x"', []),
    ('"env" in Service.Meta', ["web-1", "web-2"]),
    ("Service.Port == 9090", ["web-2"]),
    ('Service.Port != "9090"', ["web-1"]),
    ("Service.Weights.Passing == 3", ["web-2"]),
    ("Service.EnableTagOverride == false", ["web-1", "web-2"]),
    ("Service.Tags is empty", ["web-2"]),
    ("Node.Meta is not empty", ["web-1"]),
    ('Node.Node matches "-a$"', ["web-1"]),
    ('Node.Node not matches "^host"', []),
    ('Checks.Status == "warning"', ["web-1"]),
    ('Checks.Status != "warning"', ["web-2"]),
    ('Service.Tags contains "prod" and Service.Meta.env == "qa"', ["web-1"]),
    ('Service.Tags contains "prod" or Service.Meta.env == "live"', ["web-1", "web-2"]),
    ('not Service.Tags contains "prod"', ["web-2"]),
    ('not (Service.Port == 8080 or Service.Port == 9090)', []),
    ('Service.Port == 1 or Service.Port == 8080 and Service.Meta.env == "qa"', ["web-1"]),
    ('(Service.Port == 1 or Service.Port == 8080) and not Service.Meta.env == "qa"', []),
])
def test_expressions(expression: str, expected: list[str]) -> None:
    assert matching(expression) == expected


@pytest.mark.parametrize("expression, complaint", [
    ("Service.Port > 1", "unexpected character '>' at position 13"),
    ("Service.Port <= 1", "position 13"),
    ("Service.Nope == 1", "selector 'Service.Nope'"),
    ("Nope.Tags contains x", "selector 'Nope.Tags'"),
    ('Service.Tags == "x"', "use contains"),
    ('Service.Port == "eighty"', "is a number"),
    ('Service.EnableTagOverride == "yes"', "boolean"),
    ('Service.Port contains "8"', "contains/in needs"),
    ("Service.Port is empty", "is empty needs"),
    ('Service.Port matches "8"', "matches needs"),
    ('Service.ID matches "("', "matches: RE2 refuses it: missing ): ( (position 11)"),
    ("Service.ID ==", "expected a value"),
    ("(Service.ID == x", "expected ')'"),
    ("Service.ID == x and", "expected a selector"),
    ("Service.ID == x y", "unexpected 'y'"),
    ("Service.ID startswith x", "unsupported operator"),
    ('Service.ID == "unterminated', "unexpected character"),
])
def test_unsupported_expressions_say_what_and_where(expression: str, complaint: str) -> None:
    with pytest.raises(FilterError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        compile_filter(expression, EXAMPLE)


def test_long_filters_are_refused() -> None:
    with pytest.raises(FilterError, match="longer than"):
        compile_filter(" or ".join(['Service.ID == "x"'] * 500), EXAMPLE)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    for deep in ("(" * 1000 + 'Service.ID == "x"' + ")" * 1000, "not " * 1000 + "Service.ID == x"):
        with pytest.raises(FilterError, match="nested"):
            compile_filter(deep, EXAMPLE)
    keep = compile_filter("not " * 64 + 'Service.ID == "web-1"', EXAMPLE)
    assert keep(EXAMPLE)


@pytest.mark.parametrize("pattern, reason", [
    ("(?=a)", "no lookarounds"), ("(?<!a)b", "no lookarounds"), ("a(?!b)", "no lookarounds"),
    ("(a)\\1", "no backreferences"), ("(?P<x>w)(?P=x)", "no backreferences"),
])
def test_what_re2_refuses_is_refused_saying_why(pattern: str, reason: str) -> None:
    with pytest.raises(FilterError, match=f"matches: RE2 has {reason}"):
        compile_filter(f"Service.ID matches `{pattern}`", EXAMPLE)


@pytest.mark.parametrize("pattern, expected", [
    ("(a+)+$", []), ("(a|aa)*b", ["web-1", "web-2"]), ("^web-(1|2)+$", ["web-1", "web-2"]),
    ("(v1|v2)+", []), ("((ab)*c)+", []), ("(x+x+)+y", []), ("(?i)WEB-1", ["web-1"]),
])
def test_patterns_linear_in_re2_are_accepted(pattern: str, expected: list[str]) -> None:
    assert matching(f"Service.ID matches `{pattern}`") == expected


@pytest.mark.parametrize("pattern, expected", [
    ("^web-[0-9]+$", ["web-1", "web-2"]),
    ("(?:web)-(1|3)$", ["web-1"]),
    ("(ab)*web-2", ["web-2"]),
    ("[()+]*web", ["web-1", "web-2"]),
    ("\\(?web-1", ["web-1"]),
])
def test_ordinary_patterns_still_match(pattern: str, expected: list[str]) -> None:
    assert matching(f"Service.ID matches `{pattern}`") == expected

