"""Validation of every Instance and Lease field at construction."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.catalog import Instance, InvalidField, Lease
from pilotfish.catalog.model import UNUSABLE_ADDRESS_PATTERNS, ip_literal

VALID: dict[str, Any] = {
    "service": "web", "id": "web-1", "address": "10.0.0.1", "port": 80, "lease": "l1",
}


def instance(**changes: Any) -> Instance:
    return Instance(**{**VALID, **changes})


def test_service_names_are_lower_cased_dns_labels() -> None:
    assert instance(service="Web-API").service == "web-api"
    assert instance(service="a" * 63).service == "a" * 63


def test_addresses_are_normalized() -> None:
    assert instance(address="2001:DB8:0:0::1").address == "2001:db8::1"
    assert instance(address="::1").address == "::1"


def test_tags_keep_order_and_drop_duplicates() -> None:
    assert instance(tags=["b", "a", "b"]).tags == ("b", "a")


def test_json_round_trip() -> None:
    original = instance(tags=("v1",), meta={"zone": "a"}, weight=7, health="warning")
    assert Instance.from_dict(original.to_dict()) == original


def test_critical_instances_are_not_served() -> None:
    assert instance().serving
    assert instance(health="warning").serving
    assert not instance(health="critical").serving


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service", ""),
        ("service", "-web"),
        ("service", "web-"),
        ("service", "web_api"),
        ("service", "a" * 64),
        ("service", "wéb"),
        ("service", 7),
        ("id", ""),
        ("id", "a/b"),
        ("id", "-x"),
        ("id", "x" * 129),
        ("address", "10.0.0.256"),
        ("address", "example.com"),
        ("address", "fe80::1%eth0"),
        ("address", "0.0.0.0"),
        ("address", "::"),
        ("address", "0:0:0:0:0:0:0:0"),
        ("address", "255.255.255.255"),
        ("address", "224.0.0.1"),
        ("address", "239.255.255.250"),
        ("address", "ff02::1"),
        ("address", "::ffff:0.0.0.0"),
        ("address", "::ffff:224.0.0.1"),
        ("address", "::ffff:ffff:ffff"),
        ("address", None),
        ("port", 0),
        ("port", 65536),
        ("port", "80"),
        ("port", True),
        ("lease", "has space"),
        ("tags", "web"),
        ("tags", ["ok", ""]),
        ("tags", ["with space"]),
        ("tags", ["x" * 256]),
        ("tags", [str(n) for n in range(65)]),
        ("meta", {"k": 1}),
        ("meta", {"bad key": "v"}),
        ("meta", {"k": "v" * 513}),
        ("meta", {f"k{n}": "v" for n in range(65)}),
        ("meta", ["k", "v"]),
        ("weight", 0),
        ("weight", 65536),
        ("health", "sick"),
    ],
)
def test_invalid_fields_are_named(field: str, value: Any) -> None:
    with pytest.raises(InvalidField) as error:
        instance(**{field: value})
    assert error.value.field == field
    assert field in str(error.value)


@pytest.mark.parametrize("ttl", [0, 1, 86_401, 2.5, "10", None])
def test_lease_ttl_is_whole_seconds_in_range(ttl: Any) -> None:
    with pytest.raises(InvalidField) as error:
        Lease(id="l1", ttl=ttl)
    assert error.value.field == "ttl"


def test_lease_owner_is_bounded() -> None:
    assert Lease(id="l1", ttl=2, owner="sidecar-1").owner == "sidecar-1"
    with pytest.raises(InvalidField):
        Lease(id="l1", ttl=2, owner="x" * 257)


def test_usable_neighbours_of_unusable_addresses_are_kept() -> None:
    for address in ("0.0.0.1", "223.255.255.255", "240.0.0.1", "255.255.255.254", "::1",
                    "::2", "fe80::1", "ff::1", "::ffff:10.0.0.1", "::224.0.0.1"):
        assert instance(address=address).address == str(ipaddress.ip_address(address))


_SPECIAL = st.sampled_from([0, 0xFFFFFFFF, 0xE0000001, 0xEFFFFFFF, 0xDFFFFFFF, 0xF0000000,
                            0x7F000001])
_V4 = st.one_of(_SPECIAL, st.integers(0, 2**32 - 1)).map(ipaddress.IPv4Address)
_V6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**120 - 1).map(lambda low: (0xFF << 120) | low),  # multicast
    st.integers(0, 2**8),  # ::, ::1 and their neighbours
    st.one_of(_SPECIAL, st.integers(0, 2**32 - 1)).map(lambda v4: 0xFFFF << 32 | v4),
).map(ipaddress.IPv6Address)


def _spellings(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    """Every usual way to write the address: compressed, exploded, upper case, dotted tail."""
    if address.version == 4:
        return [str(address)]
    forms = [str(address), address.exploded, str(address).upper()]
    if address.ipv4_mapped is not None:
        forms += [f"::ffff:{address.ipv4_mapped}", f"0:0:0:0:0:FFFF:{address.ipv4_mapped}"]
    return forms


@given(st.one_of(_V4, _V6))
def test_the_openapi_patterns_refuse_exactly_what_the_model_refuses(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """The schema's `not` patterns (published for clients) agree with ip_literal."""
    for text in _spellings(address):
        try:
            ip_literal(text)
            refused = False
        except InvalidField:
            refused = True
        matched = any(re.search(pattern, text) for pattern in UNUSABLE_ADDRESS_PATTERNS)
        assert matched == refused, text
