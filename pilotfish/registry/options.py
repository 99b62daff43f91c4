"""The registry API's flags and the listener it builds: `pilotfish registry` and `up`."""

from __future__ import annotations

import argparse

from pilotfish.catalog.sweeper import CheckSweeper
from pilotfish.config import env, parse_hostport, read_token
from pilotfish.http.acl import AccessPolicy
from pilotfish.http.server import HttpServer
from pilotfish.http.tls import tls_settings
from pilotfish.mesh.options import add_issuer_flags, authority_from
from pilotfish.stack import Component, Stack
from pilotfish.ui.app import UiApp

DEFAULT_API = "127.0.0.1:8500"
DEFAULT_MAX_BODY = 64 * 1024


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--api, --token-file and --max-body, each with a PILOTFISH_* fallback."""
    group = parser.add_argument_group("registry API")
    group.add_argument("--api", default=env("api", DEFAULT_API),
                       help=f"registry API listen address HOST:PORT (default {DEFAULT_API}; "
                            "'off' for none) [PILOTFISH_API]")
    group.add_argument("--token-file", default=env("token_file"),
                       help="file holding a bearer token required for writes (one admin "
                            "token, named 'token-file') [PILOTFISH_TOKEN_FILE]")
    group.add_argument("--acl", default=env("acl"), metavar="FILE",
                       help="TOML access control list: named tokens with scopes read, "
                            "write:GLOB, admin (see SECURITY.md); SIGHUP re-reads it "
                            "[PILOTFISH_ACL]")
    group.add_argument("--max-body", type=_size, default=env("max_body", str(DEFAULT_MAX_BODY)),
                       metavar="BYTES",
                       help=f"largest request body the API reads, in bytes (default "
                            f"{DEFAULT_MAX_BODY}; 413 beyond) [PILOTFISH_MAX_BODY]")
    add_issuer_flags(parser)


def _size(value: str) -> int:
    """A byte count for --max-body: 1 byte to 64 MiB."""
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= 64 * 1024 * 1024:
        raise argparse.ArgumentTypeError(f"{value!r} is not a byte count from 1 to 67108864")
    return int(value)


def build(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """The API listener, sharing the process's metrics registry."""
    if args.api in (None, "", "off"):
        return []
    from pilotfish.registry.app import RegistryApi

    access = AccessPolicy(args.acl, read_token(args.token_file))
    api = RegistryApi(stack.catalog, metrics=stack.metrics, max_body=args.max_body,
                      access=access, authority=authority_from(args),
                      max_cert_ttl=args.mesh_max_cert_ttl)
    ui = UiApp(stack, api.app, access, view=stack.view(warm=False),
               docs=True)  # the status UI at /

    def before_stop() -> None:
        api.stop_waiting()
        ui.close()

    server = HttpServer(ui, parse_hostport(args.api, "--api"), before_stop=before_stop,
                        tls=tls_settings(args), metrics=stack.metrics)
    sweeper = CheckSweeper(stack.catalog)  # the process taking ttl reports expires them
    if args.acl:
        stack.on_sighup(access.reload)
    stack.read_access = access
    return [server, sweeper]
