"""`pilotfish register`: hold registrations given on the command line on one lease."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable

from pilotfish.catalog.model import Instance, InvalidField
from pilotfish.config import ConfigError, env, parse_hostport
from pilotfish.stack import Component, Stack


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The instances to hold and how: TTL, owner, tags, meta, weight."""
    parser.add_argument("instances", nargs="+", metavar="SERVICE/ID=ADDRESS:PORT")
    parser.add_argument("--ttl", type=int, default=int(env("ttl", "10") or 10),
                        help="lease TTL in seconds; keepalives every ttl/3 [PILOTFISH_TTL]")
    parser.add_argument("--owner", default=env("owner", f"register-{os.getpid()}"))
    parser.add_argument("--tag", action="append", default=[], help="repeatable")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--weight", type=int, default=1)


def build(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """A registrar holding every instance named on the command line."""
    from pilotfish.registrar.registrar import Registrar

    meta = dict(item.partition("=")[::2] for item in args.meta)
    instances = [instance_from_spec(spec, args.tag, meta, args.weight)
                 for spec in args.instances]
    return [Registrar(stack.catalog, args.ttl, args.owner, instances)]


def instance_from_spec(spec: str, tags: Iterable[str] = (), meta: dict[str, str] | None = None,
                       weight: int = 1) -> Instance:
    """Parse `SERVICE/ID=ADDRESS:PORT` (IPv6 as `[::1]:80`) from the command line."""
    service, slash, rest = spec.partition("/")
    instance_id, equals, where = rest.partition("=")
    if not slash or not equals:
        raise ConfigError(f"{spec!r} is not SERVICE/ID=ADDRESS:PORT (e.g. web/web-1=10.0.0.5:80)")
    address = parse_hostport(where, spec)
    try:
        return Instance(service=service, id=instance_id, address=address.host,
                        port=address.port, lease="unset", tags=tuple(tags),
                        meta=meta or {}, weight=weight)
    except InvalidField as exc:
        raise ConfigError(f"{spec!r}: {exc}") from None
