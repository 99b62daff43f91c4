"""The sidecar's command-line flags and what they build: `pilotfish sidecar`, `up --docker`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import socket

from pilotfish.catalog.model import InvalidField, ttl_seconds, unusable
from pilotfish.config import ConfigError, env, parse_hostport
from pilotfish.http.server import HttpServer
from pilotfish.http.status import StatusApp
from pilotfish.mesh import options as mesh_options
from pilotfish.mesh.node import MeshNode
from pilotfish.sidecar.containers import Rules
from pilotfish.sidecar.report import reporter
from pilotfish.sidecar.sidecar import Sidecar, SidecarSettings
from pilotfish.stack import Component, Stack
from pilotfish.ui.app import UiApp

log = logging.getLogger(__name__)

_SIDECAR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Sidecar flags; each has a PILOTFISH_* fallback. On `up` the sidecar runs only when
    --docker is given."""
    group = parser.add_argument_group("Docker sidecar")
    group.add_argument("--docker", default=env("docker"),
                       help="Docker engine URL, e.g. unix:///var/run/docker.sock (`pilotfish "
                            "sidecar` defaults to DOCKER_HOST, then the default socket; `up` "
                            "runs a sidecar only when this is given) [PILOTFISH_DOCKER]")
    group.add_argument("--advertise-ip", default=env("advertise_ip"),
                       help="the IP other hosts reach this host's containers at (required "
                            "with the sidecar) [PILOTFISH_ADVERTISE_IP]")
    group.add_argument("--ttl", dest="sidecar_ttl", type=int, metavar="SECONDS",
                       default=int(env("ttl", "10") or 10),
                       help="lease TTL in seconds; keepalives every ttl/3 [PILOTFISH_TTL]")
    group.add_argument("--sidecar-id", default=env("sidecar_id"),
                       help="first part of every instance id <sidecar>:<container>:<port> "
                            "(default: the host name) [PILOTFISH_SIDECAR_ID]")
    group.add_argument("--explicit", action="store_true",
                       default=env("explicit", "") not in ("", "0"),
                       help="register only containers that set SERVICE_NAME [PILOTFISH_EXPLICIT]")
    group.add_argument("--internal", action="store_true",
                       default=env("internal", "") not in ("", "0"),
                       help="register container addresses and exposed ports instead of "
                            "published host ports [PILOTFISH_INTERNAL]")
    group.add_argument("--keep-on-exit", action="store_true",
                       default=env("keep_on_exit", "") not in ("", "0"),
                       help="on SIGTERM leave registrations to lapse after the TTL instead of "
                            "withdrawing them (for restarts) [PILOTFISH_KEEP_ON_EXIT]")
    group.add_argument("--sidecar-http", default=env("sidecar_http"),
                       help="HOST:PORT for an HTTP listener serving the sidecar's /metrics and "
                            "/health [PILOTFISH_SIDECAR_HTTP]")
    mesh_options.add_sidecar_flags(parser)


def _advertise_ip(value: str | None) -> str:
    if not value:
        raise ConfigError("--advertise-ip is required with the sidecar: the IP other hosts "
                          "reach this host's containers at")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"--advertise-ip: {value!r} is not an IPv4 or IPv6 address") from None
    why = unusable(address)
    if why is not None:
        raise ConfigError(f"--advertise-ip: {value} is {why}, not an address others can reach")
    return str(address)


def _sidecar_id(value: str | None) -> str:
    name = value or socket.gethostname().split(".")[0] or "sidecar"
    if not _SIDECAR_ID.fullmatch(name):
        raise ConfigError(f"--sidecar-id: {name!r} must be 1-63 characters of A-Z a-z 0-9 _ . -"
                          ", starting with a letter or digit")
    return name


def settings(args: argparse.Namespace) -> SidecarSettings:
    """Validate the sidecar flags."""
    try:
        ttl = ttl_seconds(args.sidecar_ttl)
    except InvalidField as exc:
        raise ConfigError(f"--ttl: {exc.message}") from None
    rules = Rules(sidecar=_sidecar_id(args.sidecar_id),
                  advertise_ip=_advertise_ip(args.advertise_ip),
                  internal=args.internal, explicit=args.explicit)
    return SidecarSettings(rules=rules, docker=args.docker or None, ttl=ttl,
                           keep_on_exit=args.keep_on_exit)


def build(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """The sidecar (on `sidecar`, or on `up` with --docker) and its HTTP listener if asked."""
    if args.command != "sidecar" and not args.docker:
        return []
    if args.command == "sidecar" and str(args.registry).startswith("memory:"):
        log.warning("sidecar: --registry %s lives in this process only; point it at the "
                    "registry others read (etcd://, zk://, consul://, http://)", args.registry)
    chosen = settings(args)
    mesh = mesh_options.mesh_settings(args, chosen.rules.advertise_ip)
    node = MeshNode(stack, mesh) if mesh is not None else None
    sidecar = Sidecar(stack.catalog, chosen, stack.metrics, mesh=node)
    stack.reports["sidecar"] = reporter(sidecar)
    components: list[Component] = [sidecar] if node is None else [node, sidecar]
    if args.sidecar_http:
        listen = parse_hostport(args.sidecar_http, "--sidecar-http")
        ui = UiApp(stack, None, stack.read_access)  # the status UI at /
        app = StatusApp(stack.metrics, sidecar.health, ui, access=stack.read_access)
        components.append(HttpServer(app, listen, what="sidecar http", before_stop=ui.close,
                                     metrics=stack.metrics))
    return components
