"""The catalog core: instances on leases, the one Catalog interface, its backends and views.

Imports nothing of the HTTP surfaces, DNS, the LB or the sidecar (docs/architecture.md)."""

from pilotfish.catalog.backends import open_catalog
from pilotfish.catalog.interface import (
    BackendUnavailable,
    Catalog,
    CatalogError,
    EntryConflict,
    Snapshot,
    UnknownLease,
)
from pilotfish.catalog.model import Instance, InvalidField, Lease

__all__ = [
    "BackendUnavailable",
    "Catalog",
    "CatalogError",
    "EntryConflict",
    "Instance",
    "InvalidField",
    "Lease",
    "Snapshot",
    "UnknownLease",
    "open_catalog",
]
