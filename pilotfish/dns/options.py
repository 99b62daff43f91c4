"""The DNS command-line flags and the components they build: `pilotfish dns` and `up`."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable

from pilotfish.catalog.model import MIN_TTL
from pilotfish.config import ConfigError, HostPort, env, parse_hostport
from pilotfish.dns.access import (
    DEFAULT_FORWARD_ALLOW,
    ForwardAllow,
    RateLimit,
    parse_networks,
    parse_rate,
)
from pilotfish.dns.loops import refuse_own_listener
from pilotfish.dns.names import domain_name
from pilotfish.dns.server import DnsServer
from pilotfish.dns.spread import DnsWorkers
from pilotfish.dns.worker import DnsConfig
from pilotfish.dns.zone import ZoneSettings
from pilotfish.http.server import HttpServer
from pilotfish.http.status import StatusApp
from pilotfish.stack import Component, Stack
from pilotfish.ui.app import UiApp
from pilotfish.ui.reports import DnsReport
from pilotfish.workers.options import supervisor

DEFAULT_DNS = "127.0.0.1:8600"
MAX_NEGATIVE_TTL = 3600


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `pilotfish dns` and `pilotfish up`; each has a PILOTFISH_* fallback."""
    group = parser.add_argument_group("DNS")
    group.add_argument("--dns", default=env("dns", DEFAULT_DNS),
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
                            "the domain, tried in order (SERVFAIL or REFUSED moves on to the "
                            "next); without it they get REFUSED; our own listener is refused "
                            "[PILOTFISH_DNS_FORWARD]")
    group.add_argument("--dns-forward-allow", default=env("dns_forward_allow",
                                                          ",".join(DEFAULT_FORWARD_ALLOW)),
                       metavar="NETWORKS",
                       help="comma-separated client networks whose out-of-zone queries are "
                            "forwarded; others get REFUSED (default loopback, RFC 1918, "
                            "fc00::/7, link-local) [PILOTFISH_DNS_FORWARD_ALLOW]")
    group.add_argument("--dns-rrl", default=env("dns_rrl"), metavar="N/s",
                       help="response-rate limit per client address over UDP: beyond N "
                            "responses a second, answers go out empty with TC (BIND RRL's "
                            "slip), so real clients retry over TCP [PILOTFISH_DNS_RRL]")
    group.add_argument("--dns-metrics", default=env("dns_metrics"),
                       help="HOST:PORT for an HTTP listener serving DNS /metrics and /health "
                            "[PILOTFISH_DNS_METRICS]")


def _ns_addresses(listen: HostPort) -> tuple[str, ...]:
    try:
        address = ipaddress.ip_address(listen.host)
    except ValueError:
        return ()
    return () if address.is_unspecified else (str(address),)


def dns_config(args: argparse.Namespace) -> DnsConfig:
    """Validate the DNS flags into what a server (in this process or a worker) is built from."""
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
    refuse_own_listener(listen, forward)
    settings = ZoneSettings(
        domain=domain_name(args.domain), ttl=args.dns_ttl, negative_ttl=args.dns_negative_ttl,
        max_answers=args.dns_max_answers, ns_addresses=_ns_addresses(listen),
        recursion=bool(forward))
    allow = parse_networks(args.dns_forward_allow or "", "--dns-forward-allow")
    rrl = parse_rate(args.dns_rrl, "--dns-rrl") if args.dns_rrl else None
    return DnsConfig(listen, settings, forward, args.dns_udp_size, tuple(allow), rrl)


def dns_server(config: DnsConfig, stack: Stack) -> DnsServer:
    """The server the flags describe, serving in this process (--workers 1)."""
    return DnsServer(stack.catalog, config.listen, config.settings, forward=config.forward,
                     udp_size=config.udp_size, view=stack.view(),
                     forward_allow=ForwardAllow(config.forward_allow),
                     rate_limit=RateLimit(config.rrl) if config.rrl else None)


def reporter(server: DnsServer) -> Callable[[], DnsReport]:
    """What the status UI shows of the DNS server: answers by rcode so far, its zone."""

    def report() -> DnsReport:
        stats = server.stats
        answers: dict[str, int] = {}
        for (_, rcode), count in zip(stats.keys, stats.counts, strict=True):
            answers[rcode] = answers.get(rcode, 0) + count
        return DnsReport(listen=str(server.address), domain=server.zone.settings.domain,
                         answers=answers, names=stats.names, stale=server.view.stale)

    return report


def build(args: argparse.Namespace, stack: Stack) -> list[Component]:
    """The DNS server on the process's shared view, plus `--dns-metrics` when given.

    The DNS series go to the process's one metrics registry, so the API's /metrics shows
    them too in `pilotfish up`.
    """
    if args.dns in (None, "", "off"):
        return []
    config = dns_config(args)
    workers = supervisor(stack)
    server: DnsServer | DnsWorkers
    if workers is None:
        server = dns_server(config, stack)
        stack.reports["dns"] = reporter(server)
    else:  # the workers serve; this process sums what they count
        server = DnsWorkers(config, workers, stack.view())
        stack.reports["dns"] = server.report
    server.describe(stack.metrics)
    components: list[Component] = [server]
    if args.dns_metrics:
        listen = parse_hostport(args.dns_metrics, "--dns-metrics")
        ui = UiApp(stack, None, stack.read_access)  # the status UI at /
        app = StatusApp(stack.metrics, server.health, ui, access=stack.read_access)
        components.append(HttpServer(app, listen, what="dns metrics", before_stop=ui.close,
                                     metrics=stack.metrics))
    return components
