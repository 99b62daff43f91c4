"""The `pilotfish` command: `up` runs every component in one process, the others one each."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from pilotfish.catalog.backends import open_catalog
from pilotfish.catalog.backends.http import Unauthorized
from pilotfish.catalog.redact import redact_url
from pilotfish.config import ConfigError, env
from pilotfish.dns import options as dns_options
from pilotfish.fds import raise_open_files_limit, share_open_files
from pilotfish.http.tls import add_tls_flags
from pilotfish.lb import options as lb_options
from pilotfish.loop import run
from pilotfish.mesh import command as ca_command
from pilotfish.registrar import command as register_options
from pilotfish.registry import options as registry_options
from pilotfish.sidecar import options as sidecar_options
from pilotfish.stack import Component, ComponentOptions, Stack
from pilotfish.workers import options as workers_options
from pilotfish.workers.supervisor import Supervisor

log = logging.getLogger("pilotfish")

COMMANDS: dict[str, tuple[str, tuple[ComponentOptions, ...]]] = {
    "up": ("run the whole stack in one process",
           (registry_options, dns_options, lb_options, sidecar_options)),
    "registry": ("run only the registry API", (registry_options,)),
    "dns": ("run only the DNS server", (dns_options,)),
    "lb": ("run only the TCP load balancer", (lb_options,)),
    "register": ("hold registrations on one lease until stopped (SIGTERM deregisters)",
                 (register_options,)),
    "sidecar": ("register this host's Docker containers from its events on one lease "
                "(--route: LB listeners beside it)", (sidecar_options, lb_options)),
}
"""Each command and the components it runs, in start order."""
WORKER_COMMANDS = ("up", "dns", "lb")
"""The commands whose DNS server and LB serve from `--workers` processes."""


def build_parser() -> argparse.ArgumentParser:
    """Flags for every subcommand; each falls back to a PILOTFISH_* environment variable."""
    parser = argparse.ArgumentParser(prog="pilotfish", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, parts) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--registry", default=env("registry", "memory://"),
                         help="catalog URL: memory://, etcd://, zk://, consul://, http:// "
                              "[PILOTFISH_REGISTRY]")
        sub.add_argument("--log-level", default=env("log_level", "info"),
                         choices=["debug", "info", "warning", "error"])
        sub.add_argument("--no-uvloop", action="store_true",
                         default=env("no_uvloop", "") not in ("", "0"),
                         help="use the stdlib event loop [PILOTFISH_NO_UVLOOP]")
        for part in parts:
            part.add_flags(sub)
        if name in WORKER_COMMANDS:
            workers_options.add_flags(sub)
        if registry_options not in parts:  # `registry`/`up` have a server-side --token-file
            sub.add_argument("--token-file", default=env("token_file"),
                             help="file holding the token for an http(s):// registry (else "
                                  "?token= in the URL, else PILOTFISH_TOKEN) "
                                  "[PILOTFISH_TOKEN_FILE]")
        if registry_options in parts or lb_options in parts:
            add_tls_flags(sub)
        sub.add_argument("--ca-file", default=env("ca_file"),
                         help="CA certificate(s) that verify an https:// registry API "
                              "or an etcds:// / zks:// backend [PILOTFISH_CA_FILE]")
    ca_command.add_parser(commands)
    return parser


def build_components(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """The components a command asks for, in start order; the shared view comes first."""
    components: list[Component] = []
    for part in COMMANDS[args.command][1]:
        components += part.build(args, stack)
    if stack.has_view:
        components.insert(0, stack.view(warm=False))  # warm if a component asked so
    if isinstance(stack.supervisor, Supervisor):  # last: every part is handed to it by now
        components.append(stack.supervisor)
        stack.on_sighup(stack.supervisor.sighup)  # after the parent's own reloads
    return components


async def serve(args: argparse.Namespace) -> int:
    """Open the catalog, start the components, and run until SIGTERM or SIGINT."""
    open_files = raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client_token = None if args.command in ("up", "registry") else args.token_file
    catalog = await open_catalog(args.registry, client_token, args.ca_file)
    started: list[Component] = []
    stack = Stack(catalog)
    stack.workers = workers_options.worker_count(args)
    loop.add_signal_handler(signal.SIGHUP, stack.sighup)
    try:
        components = build_components(args, stack)
        share_open_files(components, open_files)
        for component in components:
            await component.start()
            started.append(component)
        log.info("pilotfish %s running on registry %s", args.command,
                 redact_url(args.registry))
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
    if args.command == "ca":
        try:
            return ca_command.run(args)
        except ConfigError as exc:
            print(f"pilotfish: {exc}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        return run(serve(args), use_uvloop=not args.no_uvloop)
    except (ConfigError, ValueError, Unauthorized) as exc:  # a refused token: no traceback
        print(f"pilotfish: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
