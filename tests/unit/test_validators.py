"""Every validator, fed control characters, trailing newlines, non-ASCII digits and letters
that fold to ASCII: what passes is exactly what the pattern says, matched whole, in ASCII."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.catalog.model import (
    Instance,
    InvalidField,
    Lease,
    identifier,
    ip_literal,
    service_name,
)
from pilotfish.http.errors import ApiError
from pilotfish.registry.bodies import parse_index, parse_wait

# Characters that have slipped through `$`, str.isdigit(), \d or str.lower() somewhere.
HOSTILE = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u00a0", "\u200b",
           "\ufeff", "\u212a",  # Kelvin sign: lower() gives "k"
           "\u0130", "\u017f",  # dotted capital I, long s: fold to ASCII letters
           "\u0663", "\uff13", "\u00b2", "\u0e53", "\u2167"]  # Arabic-Indic, full-width, ², Thai

hostile = st.sampled_from(HOSTILE) | st.characters(categories=["Cc", "Nd", "Zs", "Cf"]).filter(
    lambda c: not c.isascii() or not c.isprintable())

VALID = {"service": "web", "id": "web-1", "address": "10.0.0.1", "port": 80, "lease": "l1"}


def meta_key(value: str) -> object:
    return Instance(**VALID, meta={value: "v"})  # type: ignore[arg-type]


def priority(value: str) -> object:
    return Instance(**VALID, meta={"priority": value})  # type: ignore[arg-type]


def tag(value: str) -> object:
    return Instance(**VALID, tags=(value,))  # type: ignore[arg-type]


def owner(value: str) -> object:
    return Lease(id="l1", ttl=10, owner=value)


# (validator, values it must accept): a hostile character anywhere in one of them is refused.
VALIDATORS: dict[str, tuple[Callable[[str], object], list[str]]] = {
    "service": (service_name, ["web", "Web-API", "a" * 63, "x1"]),
    "id": (lambda v: identifier(v, "id"), ["web-1", "A.b_c", "0" * 128]),
    "address": (ip_literal, ["10.0.0.1", "::1", "2001:db8::5"]),
    "meta key": (meta_key, ["zone", "a-b_C9"]),
    "meta.priority": (priority, ["0", "1", "10", "65535", "00007"]),
    "tag": (tag, ["primary", "v1.2", "a=b"]),
    "owner": (owner, ["sidecar-1", "instance:web-1", "host a:42"]),
    "wait": (parse_wait, ["30s", "500ms", "5m", "10", "1.5s"]),
    "index": (parse_index, ["0", "17", "123456789"]),
}
REFUSED = (InvalidField, ApiError, ValueError)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_the_plain_values_pass(name: str) -> None:
    check, values = VALIDATORS[name]
    for value in values:
        check(value)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_character_anywhere_is_refused(name: str, data: st.DataObject) -> None:
    check, values = VALIDATORS[name]
    value = data.draw(st.sampled_from(values))
    at = data.draw(st.integers(0, len(value)))
    char = data.draw(hostile)
    with pytest.raises(REFUSED):
        check(value[:at] + char + value[at:])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_service_names_that_pass_are_plain_ascii_labels(text: str) -> None:
    try:
        name = service_name(text)
    except InvalidField:
        return
    assert text.isascii() and text.isprintable() and name == text.lower()
    assert 0 < len(name) <= 63 and not name.startswith("-") and not name.endswith("-")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=20))
def test_durations_that_pass_are_ascii_numbers(text: str) -> None:
    try:
        seconds = parse_wait(text)
    except ApiError:
        return
    assert text.isascii() and text.strip() == text and 0 <= seconds <= 600


def test_named_cases_from_the_issue() -> None:
    with pytest.raises(ApiError):
        parse_wait("\u0663s")  # was accepted as 3 s
    with pytest.raises(InvalidField):
        service_name("\u212aube")  # was folded to "kube"
    with pytest.raises(InvalidField):
        service_name("web\n")
    with pytest.raises(InvalidField) as error:
        priority("\u00b2")  # isdigit() but not int(): blanked the service in DNS
    assert error.value.field == "meta.priority"
    with pytest.raises(InvalidField):
        priority("65536")
    with pytest.raises(InvalidField):
        meta_key("a\n")
