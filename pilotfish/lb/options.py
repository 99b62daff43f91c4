"""The LB's command-line flags and the components they build: `pilotfish lb` and `up`."""

from __future__ import annotations

import argparse

from pilotfish.config import ConfigError, env, parse_hostport, read_token
from pilotfish.http.acl import AccessPolicy
from pilotfish.http.server import HttpServer
from pilotfish.http.status import StatusApp
from pilotfish.http.tls import tls_settings
from pilotfish.lb.api import RoutesApp
from pilotfish.lb.balancer import LoadBalancer
from pilotfish.lb.fleet import FleetBalancer
from pilotfish.lb.report import fleet_reporter, reporter
from pilotfish.lb.routes import parse_route
from pilotfish.lb.settings import LbSettings
from pilotfish.stack import Component, Stack
from pilotfish.ui.app import UiApp
from pilotfish.workers.options import supervisor

DEFAULT_LB_API = "127.0.0.1:8700"
DEFAULTS = LbSettings()

_NUMBERS: tuple[tuple[str, str, type, str], ...] = (
    ("connect_timeout", "connect-timeout", float, "seconds to connect to an instance"),
    ("idle_timeout", "idle-timeout", float, "close a connection silent this long (0: never)"),
    ("drain_timeout", "drain-timeout", float,
     "how long connections to a removed instance or route may finish"),
    ("stop_timeout", "stop-timeout", float, "on SIGTERM, how long connections may finish"),
    ("max_connections", "max-connections", int, "open client connections, all routes"),
    ("retries", "retries", int, "other instances tried when a connect fails"),
    ("check_interval", "check-interval", float, "seconds between active TCP checks (0: off)"),
    ("check_timeout", "check-timeout", float, "seconds a check's connect may take"),
    ("rise", "rise", int, "passed checks that bring a down instance back"),
    ("fall", "fall", int, "failed checks that take an instance down"),
    ("eject_after", "eject-after", int, "consecutive failed connects that eject (0: never)"),
    ("eject_base", "eject-time", float, "first ejection, doubled while it keeps failing"),
    ("eject_max", "eject-max", float, "longest ejection"),
    ("max_ejected", "max-ejected", float, "largest share of a pool ejected at once (0-1)"),
    ("panic_below", "panic-below", float,
     "healthy share below which every instance is used (panic mode, 0-1)"),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """--route, --routes-file, --lb-api and the --lb-* tunables, each with an env fallback."""
    group = parser.add_argument_group("TCP load balancer")
    group.add_argument("--route", action="append", default=None,
                       help="HOST:PORT=SERVICE[.TAG][?balance=p2c|round_robin|least_conn|"
                            "weighted|hash&proxy_protocol=v1|v2&max_connections=N], "
                            "repeatable [PILOTFISH_ROUTE: space-separated]")
    group.add_argument("--routes-file", default=env("routes_file"),
                       help="file of routes, one per line; re-read on SIGHUP "
                            "[PILOTFISH_ROUTES_FILE]")
    group.add_argument("--lb-api", default=env("lb_api", DEFAULT_LB_API),
                       help=f"HTTP listen address for /v1/routes, /metrics and /health "
                            f"(default {DEFAULT_LB_API}; 'off' for none) [PILOTFISH_LB_API]")
    group.add_argument("--lb-acl", default=env("lb_acl"), metavar="FILE",
                       help="TOML access control list for the LB's HTTP port (the registry's "
                            "--acl format): route changes need an admin token; re-read on "
                            "SIGHUP [PILOTFISH_LB_ACL]")
    group.add_argument("--lb-token-file", default=env("lb_token_file"), metavar="FILE",
                       help="file holding the admin token route changes need "
                            "[PILOTFISH_LB_TOKEN_FILE]")
    group.add_argument("--lb-engine", choices=("epoll", "transports"),
                       default=env("lb_engine", DEFAULTS.engine),
                       help="how connections are carried: raw sockets on an epoll set (Linux; "
                            "the fast one) or asyncio transports "
                            f"(default {DEFAULTS.engine}) [PILOTFISH_LB_ENGINE]")
    for attribute, flag, kind, help_text in _NUMBERS:
        default = getattr(DEFAULTS, attribute)
        group.add_argument(f"--lb-{flag}", dest=f"lb_{attribute}", type=kind,
                           default=env(f"lb_{flag}", str(default)),
                           help=f"{help_text} (default {default}) "
                                f"[PILOTFISH_LB_{flag.upper().replace('-', '_')}]")


def settings(args: argparse.Namespace) -> LbSettings:
    """Validate the --lb-* flags into LbSettings."""
    values = {attribute: getattr(args, f"lb_{attribute}") for attribute, *_ in _NUMBERS}
    for attribute, flag, _, _ in _NUMBERS:
        if values[attribute] < 0:
            raise ConfigError(f"--lb-{flag}: must not be negative")
    for attribute in ("max_ejected", "panic_below"):
        if values[attribute] > 1:
            raise ConfigError(f"--lb-{attribute.replace('_', '-')}: a share, 0-1")
    if values["connect_timeout"] <= 0 or values["check_timeout"] <= 0:
        raise ConfigError("--lb-connect-timeout/--lb-check-timeout: must be positive")
    if values["rise"] < 1 or values["fall"] < 1:
        raise ConfigError("--lb-rise/--lb-fall: at least 1")
    if args.lb_engine not in ("epoll", "transports"):
        raise ConfigError(f"--lb-engine: epoll or transports, not {args.lb_engine!r}")
    if args.lb_engine == "epoll" and DEFAULTS.engine != "epoll":
        raise ConfigError("--lb-engine epoll: needs Linux (select.epoll)")
    return LbSettings(**values, engine=args.lb_engine)


def build(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """The balancer (for `pilotfish lb`, or `up` given routes) and its HTTP port."""
    texts = args.route if args.route is not None else (env("route", "") or "").split()
    if args.command != "lb" and not texts and not args.routes_file:
        return []
    routes = [parse_route(text) for text in texts]
    workers = supervisor(stack)
    balancer: LoadBalancer
    if workers is None:
        balancer = LoadBalancer(stack, routes, settings(args), routes_file=args.routes_file)
        stack.reports["lb"] = reporter(balancer)
    else:  # the workers carry the connections; this process holds the routes and the ports
        balancer = FleetBalancer(stack, routes, settings(args), workers,
                                 routes_file=args.routes_file)
        stack.reports["lb"] = fleet_reporter(balancer)
    components: list[Component] = [balancer]
    if args.lb_api not in (None, "", "off"):
        access = AccessPolicy(args.lb_acl, read_token(args.lb_token_file))
        if args.lb_acl:
            stack.on_sighup(access.reload)
        reads = access if access.enabled else stack.read_access
        ui = UiApp(stack, RoutesApp(balancer, access), reads)  # the status UI at /
        app = StatusApp(stack.metrics, balancer.health, ui, access=reads)
        components.append(HttpServer(app, parse_hostport(args.lb_api, "--lb-api"),
                                     what="lb API", before_stop=ui.close,
                                     tls=tls_settings(args), metrics=stack.metrics))
    return components
