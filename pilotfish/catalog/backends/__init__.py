"""Backends by URL scheme; each lives in its own module and is imported only when used."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from pilotfish.catalog.interface import Catalog
from pilotfish.catalog.redact import redact_url
from pilotfish.config import ConfigError

# scheme: (the client it imports, the extra with it, every top-level module that extra
# installs: a backend imports some of them (grpc) before its client, and a client its own)
EXTRAS: dict[str, tuple[str, str, frozenset[str]]] = {
    "etcd": ("aetcd", "etcd", frozenset({"aetcd", "grpc", "google"})),  # google: protobuf
    "etcds": ("aetcd", "etcd", frozenset({"aetcd", "grpc", "google"})),
    "zk": ("kazoo", "zookeeper", frozenset({"kazoo"})),
    "zks": ("kazoo", "zookeeper", frozenset({"kazoo"})),
    "consul": ("consul", "consul", frozenset({"consul", "requests"})),
}

BACKENDS: dict[str, str] = {
    "memory": "pilotfish.catalog.backends.memory:MemoryCatalog",
    "etcd": "pilotfish.catalog.backends.etcd:EtcdCatalog",
    "etcds": "pilotfish.catalog.backends.etcd:EtcdCatalog",
    "zk": "pilotfish.catalog.backends.zookeeper:ZooKeeperCatalog",
    "zks": "pilotfish.catalog.backends.zookeeper:ZooKeeperCatalog",
    "consul": "pilotfish.catalog.backends.consul:ConsulCatalog",
    "http": "pilotfish.catalog.backends.http:HttpCatalog",
    "https": "pilotfish.catalog.backends.http:HttpCatalog",
}


async def open_catalog(url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> Catalog:
    """Open the catalog a URL names: memory://, etcd(s)://, zk(s)://, consul://, http(s)://.

    `token_file` is for an http(s):// registry API (its client's token); `ca_file` verifies
    an https:// API, an etcds:// cluster or a zks:// ensemble.
    """
    try:
        return await _open(url, token_file, ca_file)
    except ValueError as exc:  # errors name the URL: never with its password or token
        shown = redact_url(url)
        if shown == url or type(exc) not in (ValueError, ConfigError):
            raise
        raise type(exc)(str(exc).replace(url, shown)) from None


async def _open(url: str, token_file: str | None, ca_file: str | None) -> Catalog:
    scheme = urlsplit(url).scheme.lower()
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"registry URL {redact_url(url)!r}: unknown scheme {scheme!r} "
                         f"(known: {known})")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        client, extra, modules = EXTRAS.get(scheme, ("", "", frozenset()))
        missing = (exc.name or "").partition(".")[0]
        if missing not in modules:
            raise
        raise ConfigError(f"{scheme}:// needs the {client} client and what it depends on; "
                          f"{missing} is not installed: pip install 'pilotfish[{extra}]' "
                          "(or 'pilotfish[all]')") from None
    catalog_class: type[Catalog] = getattr(module, class_name)
    return await catalog_class.from_url(url, token_file, ca_file)
