"""The DNS command-line flags and the component they build, kept out of the shared cli.py."""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any

from pilotfish.config import ConfigError, HostPort, env, parse_hostport
from pilotfish.dns.names import domain_name
from pilotfish.dns.server import DnsServer
from pilotfish.dns.zone import ZoneSettings
from pilotfish.metrics import Metrics
from pilotfish.registry.catalog import Catalog
from pilotfish.registry.model import MIN_TTL

DEFAULT_DNS = "127.0.0.1:8600"
MAX_NEGATIVE_TTL = 3600


def add_dns_flags(parser: argparse.ArgumentParser, default_listen: str) -> None:
    """Flags shared by `pilotfish dns` and `pilotfish up`; each has a PILOTFISH_* fallback."""
    group = parser.add_argument_group("DNS")
    group.add_argument("--dns", default=env("dns", default_listen),
                       help=f"DNS listen address HOST:PORT, UDP and TCP (default {DEFAULT_DNS}; "
                            "'off' for none) [PILOTFISH_DNS]")
    group.add_argument("--domain", default=env("domain", "pilotfish"),
                       help="zone served: <service>.service.DOMAIN [PILOTFISH_DOMAIN]")
    group.add_argument("--dns-ttl", type=int, default=env("dns_ttl", "0"),
                       help=f"TTL of answers in seconds, 0-{MIN_TTL} (never longer than the "
                            "shortest lease) [PILOTFISH_DNS_TTL]")
    group.add_argument("--dns-negative-ttl", type=int,
                       default=env("dns_negative_ttl", "1"),
                       help="SOA minimum: how long NXDOMAIN/NODATA may be cached "
                            "[PILOTFISH_DNS_NEGATIVE_TTL]")
    group.add_argument("--dns-max-answers", type=int,
                       default=env("dns_max_answers", "32"),
                       help="cap on A/AAAA records per answer, 0 for none "
                            "[PILOTFISH_DNS_MAX_ANSWERS]")
    group.add_argument("--dns-udp-size", type=int,
                       default=env("dns_udp_size", "1232"),
                       help="largest UDP response sent (and EDNS size advertised) "
                            "[PILOTFISH_DNS_UDP_SIZE]")
    group.add_argument("--dns-forward", default=env("dns_forward", ""),
                       help="comma-separated upstream resolvers HOST:PORT for names outside "
                            "the domain; without it they get REFUSED [PILOTFISH_DNS_FORWARD]")
    group.add_argument("--dns-metrics", default=env("dns_metrics"),
                       help="HOST:PORT for an HTTP listener serving DNS /metrics and /health "
                            "[PILOTFISH_DNS_METRICS]")


def _ns_addresses(listen: HostPort) -> tuple[str, ...]:
    try:
        address = ipaddress.ip_address(listen.host)
    except ValueError:
        return ()
    return () if address.is_unspecified else (str(address),)


def dns_server(args: argparse.Namespace, catalog: Catalog) -> DnsServer:
    """Validate the DNS flags and build the server they describe."""
    listen = parse_hostport(args.dns, "--dns")
    if not 0 <= args.dns_ttl <= MIN_TTL:
        raise ConfigError(f"--dns-ttl: {args.dns_ttl} is not within 0-{MIN_TTL} seconds: an "
                          "answer must not outlive the shortest lease")
    if not 0 <= args.dns_negative_ttl <= MAX_NEGATIVE_TTL:
        raise ConfigError(f"--dns-negative-ttl: {args.dns_negative_ttl} is not within "
                          f"0-{MAX_NEGATIVE_TTL} seconds")
    if not 0 <= args.dns_max_answers <= 4096:
        raise ConfigError(f"--dns-max-answers: {args.dns_max_answers} is not within 0-4096")
    if not 512 <= args.dns_udp_size <= 65535:
        raise ConfigError(f"--dns-udp-size: {args.dns_udp_size} is not within 512-65535")
    forward = tuple(parse_hostport(item, "--dns-forward")
                    for item in (args.dns_forward or "").split(",") if item.strip())
    settings = ZoneSettings(
        domain=domain_name(args.domain), ttl=args.dns_ttl, negative_ttl=args.dns_negative_ttl,
        max_answers=args.dns_max_answers, ns_addresses=_ns_addresses(listen),
        recursion=bool(forward))
    return DnsServer(catalog, listen, settings, forward=forward, udp_size=args.dns_udp_size)


def dns_components(args: argparse.Namespace, catalog: Catalog,
                   api_metrics: Metrics | None = None) -> list[Any]:
    """The DNS server, plus its metrics listener when --dns-metrics is given.

    With the registry API in the same process, the DNS series also go to the API's /metrics.
    """
    server = dns_server(args, catalog)
    components: list[Any] = [server]
    if api_metrics is not None:
        server.describe(api_metrics)
    if getattr(args, "dns_metrics", None):
        from pilotfish.registry.server import ApiServer

        listen = parse_hostport(args.dns_metrics, "--dns-metrics")
        components.append(ApiServer(MetricsApp(server), listen, what="dns metrics"))
    return components


class MetricsApp:
    """A tiny ASGI app for `--dns-metrics`: GET /metrics (Prometheus text) and /health."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.metrics = Metrics()
        server.describe(self.metrics)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/metrics":
            status, kind = 200, b"text/plain; version=0.0.4"
            body = self.metrics.render().encode()
        elif path == "/health":
            stale = self.server.view.stale
            status, kind = (503 if stale else 200), b"application/json"
            body = json.dumps({"status": "stale" if stale else "ok",
                               "index": self.server.zone.index}).encode()
        else:
            status, kind, body = 404, b"text/plain", b"not found\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
