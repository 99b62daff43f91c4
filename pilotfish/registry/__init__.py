"""The registry: instances on leases in a pluggable catalog, and the REST API over it."""

from pilotfish.registry.backends import open_catalog
from pilotfish.registry.catalog import (
    BackendUnavailable,
    Catalog,
    CatalogError,
    Snapshot,
    UnknownLease,
)
from pilotfish.registry.model import Instance, InvalidField, Lease

__all__ = [
    "BackendUnavailable",
    "Catalog",
    "CatalogError",
    "Instance",
    "InvalidField",
    "Lease",
    "Snapshot",
    "UnknownLease",
    "open_catalog",
]
