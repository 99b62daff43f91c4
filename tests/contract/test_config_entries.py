"""Config entries, the same on every backend: read, check-and-set, seen by every reader."""

from __future__ import annotations

import pytest

from pilotfish.catalog import Catalog, EntryConflict, InvalidField, open_catalog
from pilotfish.catalog.entries import MAX_ENTRY_BYTES


async def test_an_entry_is_absent_then_written_then_replaced_by_check_and_set(
    catalog: Catalog, unique: str
) -> None:
    name = f"t-{unique}"
    absent = await catalog.config_entry(name)
    assert (absent.value, absent.version) == ({}, 0)
    first = await catalog.put_config_entry(name, {"rules": [1, 2], "default": "deny"}, 0)
    assert first.version > 0 and first.value == {"rules": [1, 2], "default": "deny"}
    assert await catalog.config_entry(name) == first
    with pytest.raises(EntryConflict):
        await catalog.put_config_entry(name, {"lost": True}, 0)  # it exists now
    second = await catalog.put_config_entry(name, {"rules": []}, first.version)
    assert second.version > first.version and second.value == {"rules": []}
    with pytest.raises(EntryConflict):
        await catalog.put_config_entry(name, {"lost": True}, first.version)  # stale
    assert (await catalog.config_entry(name)).value == {"rules": []}


async def test_another_reader_of_the_backend_sees_the_write(backend_url: str, catalog: Catalog,
                                                            unique: str) -> None:
    name = f"shared-{unique}"
    written = await catalog.put_config_entry(name, {"default": "allow"}, 0)
    # memory:// lives in one process: there the one catalog is every reader there is
    other = catalog if backend_url.startswith("memory") else await open_catalog(backend_url)
    try:
        assert await other.config_entry(name) == written
        again = await other.put_config_entry(name, {"default": "deny"}, written.version)
        assert (await catalog.config_entry(name)) == again
    finally:
        if other is not catalog:
            await other.close()


@pytest.mark.parametrize(("name", "value", "version", "field"), [
    ("Upper", {}, 0, "name"),
    ("a/b", {}, 0, "name"),
    ("x" * 64, {}, 0, "name"),
    ("ok", ["not", "an", "object"], 0, "value"),
    ("ok", {"big": "x" * MAX_ENTRY_BYTES}, 0, "value"),
    ("ok", {"nan": float("nan")}, 0, "value"),
    ("ok", {}, -1, "version"),
    ("ok", {}, True, "version"),
])
async def test_bad_names_values_and_versions_are_refused_before_the_backend(
    catalog: Catalog, name: str, value: object, version: int, field: str
) -> None:
    with pytest.raises(InvalidField) as refused:
        await catalog.put_config_entry(name, value, version)  # type: ignore[arg-type]
    assert refused.value.field == field
    if field == "name":
        with pytest.raises(InvalidField):
            await catalog.config_entry(name)
