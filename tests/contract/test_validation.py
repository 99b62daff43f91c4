"""Bad input gets the same error on every backend: the Catalog base validates before any hook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from pilotfish.catalog import Catalog, Instance, InvalidField

BAD_ID = "no spaces/allowed"


def _at(address: str) -> Instance:
    """An instance that differs from a valid one only by its address."""
    return replace(Instance(service="web", id="w1", address="10.0.0.1", port=80, lease="l1"),
                   address=address)


CALLS: dict[str, tuple[Callable[[Catalog], Awaitable[object]], str]] = {
    "ttl too small": (lambda c: c.create_lease(1), "ttl"),
    "ttl too large": (lambda c: c.create_lease(86_401), "ttl"),
    "ttl not a number": (lambda c: c.create_lease("30"), "ttl"),  # type: ignore[arg-type]
    "ttl a fraction": (lambda c: c.create_lease(2.5), "ttl"),  # type: ignore[arg-type]
    "owner not a string": (lambda c: c.create_lease(30, 7), "owner"),  # type: ignore[arg-type]
    "owner too long": (lambda c: c.create_lease(30, "o" * 257), "owner"),
    "owner not ASCII": (lambda c: c.create_lease(30, "ow\u00f1er"), "owner"),
    "owner with a newline": (lambda c: c.create_lease(30, "a\nb"), "owner"),
    "keepalive bad id": (lambda c: c.keepalive(BAD_ID), "lease"),
    "lease bad id": (lambda c: c.lease(BAD_ID), "lease"),
    "revoke bad id": (lambda c: c.revoke(BAD_ID), "lease"),
    "revoke empty id": (lambda c: c.revoke(""), "lease"),
    "deregister bad id": (lambda c: c.deregister(BAD_ID), "id"),
    "deregister not a string": (lambda c: c.deregister(None), "id"),  # type: ignore[arg-type]
    "register the unspecified address": (
        lambda c: c.register(_at("0.0.0.0")), "address"),  # noqa: S104
    "register an IPv6 unspecified address": (lambda c: c.register(_at("::")), "address"),
    "register the broadcast address": (lambda c: c.register(_at("255.255.255.255")), "address"),
    "register a multicast address": (lambda c: c.register(_at("224.0.0.1")), "address"),
    "register an IPv6 multicast address": (lambda c: c.register(_at("ff02::1")), "address"),
    "register a mapped unspecified address": (
        lambda c: c.register(_at("::ffff:0.0.0.0")), "address"),
    "register not an instance": (
        lambda c: c.register({"id": "x"}), "instance"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(CALLS))
async def test_bad_input_is_refused_the_same_way_everywhere(catalog: Catalog, case: str) -> None:
    call, field = CALLS[case]
    with pytest.raises(InvalidField) as error:
        await call(catalog)
    assert error.value.field == field
