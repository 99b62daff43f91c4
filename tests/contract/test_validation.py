"""Bad input gets the same error on every backend: the Catalog base validates before any hook."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from pilotfish.registry import Catalog, InvalidField

BAD_ID = "no spaces/allowed"

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
    "register not an instance": (
        lambda c: c.register({"id": "x"}), "instance"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("case", sorted(CALLS))
async def test_bad_input_is_refused_the_same_way_everywhere(catalog: Catalog, case: str) -> None:
    call, field = CALLS[case]
    with pytest.raises(InvalidField) as error:
        await call(catalog)
    assert error.value.field == field
