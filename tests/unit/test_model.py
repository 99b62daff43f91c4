"""Validation of every Instance and Lease field at construction."""

from __future__ import annotations

from typing import Any

import pytest

from pilotfish.registry import Instance, InvalidField, Lease

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
