"""Backends by URL scheme; each lives in its own module and is imported only when used."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from pilotfish.registry.catalog import Catalog

BACKENDS: dict[str, str] = {
    "memory": "pilotfish.registry.backends.memory:MemoryCatalog",
    "etcd": "pilotfish.registry.backends.etcd:EtcdCatalog",
    "zk": "pilotfish.registry.backends.zookeeper:ZooKeeperCatalog",
    "consul": "pilotfish.registry.backends.consul:ConsulCatalog",
    "http": "pilotfish.registry.backends.http:HttpCatalog",
    "https": "pilotfish.registry.backends.http:HttpCatalog",
}


async def open_catalog(url: str, token_file: str | None = None,
                       ca_file: str | None = None) -> Catalog:
    """Open the catalog a URL names: memory://, etcd://, zk://, consul://, http(s)://.

    `token_file` and `ca_file` are for an http(s):// registry API (its client's token and CA).
    """
    scheme = urlsplit(url).scheme.lower()
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"registry URL {url!r}: unknown scheme {scheme!r} (known: {known})")
    module_name, class_name = target.split(":")
    catalog_class = getattr(importlib.import_module(module_name), class_name)
    if scheme in ("http", "https"):
        http_catalog: Catalog = await catalog_class.from_url(url, token_file, ca_file)
        return http_catalog
    catalog: Catalog = await catalog_class.from_url(url)
    return catalog
