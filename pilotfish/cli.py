"""The `pilotfish` command: `up` runs every component in one process, the others one each."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Protocol

from pilotfish.config import ConfigError, env, parse_hostport, read_token
from pilotfish.loop import run
from pilotfish.registry.backends import open_catalog
from pilotfish.registry.catalog import Catalog

log = logging.getLogger("pilotfish")


class Component(Protocol):
    """Anything `pilotfish up` starts and stops: the API, DNS, LB listeners, the sidecar."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    """Flags for every subcommand; each falls back to a PILOTFISH_* environment variable."""
    parser = argparse.ArgumentParser(prog="pilotfish", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--registry", default=env("registry", "memory://"),
                         help="catalog URL: memory://, etcd://, zk://, consul://, http:// "
                              "[PILOTFISH_REGISTRY]")
        sub.add_argument("--log-level", default=env("log_level", "info"),
                         choices=["debug", "info", "warning", "error"])
        sub.add_argument("--no-uvloop", action="store_true",
                         default=env("no_uvloop", "") not in ("", "0"),
                         help="use the stdlib event loop [PILOTFISH_NO_UVLOOP]")

    def api_flags(sub: argparse.ArgumentParser, default: str | None) -> None:
        sub.add_argument("--api", default=env("api", default),
                         help="registry API listen address HOST:PORT [PILOTFISH_API]")
        sub.add_argument("--token-file", default=env("token_file"),
                         help="file holding a bearer token required for writes "
                              "[PILOTFISH_TOKEN_FILE]")

    from pilotfish.dns.options import DEFAULT_DNS, add_dns_flags

    up = commands.add_parser("up", help="run the whole stack in one process")
    common(up)
    api_flags(up, "127.0.0.1:8500")
    add_dns_flags(up, DEFAULT_DNS)

    dns = commands.add_parser("dns", help="run only the DNS server")
    common(dns)
    add_dns_flags(dns, DEFAULT_DNS)

    registry = commands.add_parser("registry", help="run only the registry API")
    common(registry)
    api_flags(registry, "127.0.0.1:8500")

    register = commands.add_parser(
        "register", help="hold registrations on one lease until stopped (SIGTERM deregisters)")
    common(register)
    register.add_argument("instances", nargs="+", metavar="SERVICE/ID=ADDRESS:PORT")
    register.add_argument("--ttl", type=int, default=int(env("ttl", "10") or 10),
                          help="lease TTL in seconds; keepalives every ttl/3 [PILOTFISH_TTL]")
    register.add_argument("--owner", default=env("owner", f"register-{os.getpid()}"))
    register.add_argument("--tag", action="append", default=[], help="repeatable")
    register.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    register.add_argument("--weight", type=int, default=1)
    return parser


async def build_components(args: argparse.Namespace, catalog: Catalog) -> list[Component]:
    """The components a command asks for, in start order."""
    components: list[Component] = []
    api_metrics = None
    if getattr(args, "api", None):
        from pilotfish.registry.api import RegistryApi
        from pilotfish.registry.server import ApiServer

        api = RegistryApi(catalog, token=read_token(args.token_file))
        api_metrics = api.metrics
        components.append(ApiServer(api.app, parse_hostport(args.api, "--api"),
                                    before_stop=api.stop_waiting))
    if args.command == "register":
        from pilotfish.registry.registrar import Registrar, instance_from_spec

        meta = dict(item.partition("=")[::2] for item in args.meta)
        instances = [instance_from_spec(spec, args.tag, meta, args.weight)
                     for spec in args.instances]
        components.append(Registrar(catalog, args.ttl, args.owner, instances))
    if getattr(args, "dns", "off") not in (None, "", "off"):
        from pilotfish.dns.options import dns_components

        components += dns_components(args, catalog, api_metrics)
    return components


async def serve(args: argparse.Namespace) -> int:
    """Open the catalog, start the components, and run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    catalog = await open_catalog(args.registry)
    started: list[Component] = []
    try:
        for component in await build_components(args, catalog):
            await component.start()
            started.append(component)
        log.info("pilotfish %s running on registry %s", args.command, args.registry)
        await stop.wait()
        log.info("pilotfish stopping")
    finally:
        for component in reversed(started):
            await component.stop()
        await catalog.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        return run(serve(args), use_uvloop=not args.no_uvloop)
    except (ConfigError, ValueError) as exc:
        print(f"pilotfish: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
