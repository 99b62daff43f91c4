"""Parsing of command-line and environment settings shared by every component."""

from __future__ import annotations

import os
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the flag."""


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listen or connect address: IPv4, [IPv6] or a name, and a port (0 = pick one)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_hostport(value: str, flag: str, default_host: str = "127.0.0.1") -> HostPort:
    """Parse "HOST:PORT", "[V6]:PORT" or ":PORT"."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag}: {value!r} is not HOST:PORT (for example 127.0.0.1:8053)")
    return HostPort(host or default_host, int(port_text))


def parse_endpoints(netloc: str, default_port: int, what: str) -> list[HostPort]:
    """Parse a registry URL's host list, "h1:p1,[v6]:p2,h3", filling in the default port."""
    endpoints = []
    for item in filter(None, (part.strip() for part in netloc.split(","))):
        bare = item.rpartition("]")[2] if item.startswith("[") else item
        with_port = item if ":" in bare else f"{item}:{default_port}"
        endpoint = parse_hostport(with_port, what, default_host="")
        if not endpoint.host or endpoint.port == 0:
            raise ConfigError(f"{what}: bad host {item!r} (want host[:port])")
        endpoints.append(endpoint)
    if not endpoints:
        raise ConfigError(f"{what}: no host")
    return endpoints


def env(name: str, default: str | None = None) -> str | None:
    """The PILOTFISH_<NAME> environment variable, which every flag falls back to."""
    return os.environ.get(f"PILOTFISH_{name.upper().replace('-', '_')}", default)


def read_token(path: str | None) -> str | None:
    """Read a bearer token from a file (first line, stripped); None when no file is given."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file: cannot read {path!r}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"--token-file: {path!r} is empty")
    return token
