"""Routes: which listen address balances over which service, parsed from flags, files and JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from pilotfish.config import ConfigError, HostPort, parse_hostport
from pilotfish.registry.model import InvalidField, service_name

BALANCES = ("p2c", "round_robin", "least_conn", "weighted", "hash")
"""Balancing algorithms a route can name (`?balance=`); p2c is the default."""

PROXY_PROTOCOLS = ("v1", "v2")
MAX_ROUTE_CONNECTIONS = 1_000_000


@dataclass(frozen=True, slots=True)
class Route:
    """One listener: clients connecting to `listen` reach an instance of `service` (with `tag`)."""

    listen: HostPort
    service: str
    tag: str | None = None
    balance: str = "p2c"
    proxy_protocol: str | None = None
    max_connections: int = 0  # 0: only the global limit applies

    @property
    def key(self) -> str:
        """The route's name everywhere (API paths, metrics labels): its listen address."""
        return str(self.listen)

    @property
    def target(self) -> str:
        """SERVICE[.TAG][?options], as written after the '=' of a route."""
        text = self.service + (f".{self.tag}" if self.tag else "")
        options = [f"balance={self.balance}"] if self.balance != "p2c" else []
        if self.proxy_protocol:
            options.append(f"proxy_protocol={self.proxy_protocol}")
        if self.max_connections:
            options.append(f"max_connections={self.max_connections}")
        return text + ("?" + "&".join(options) if options else "")

    def __str__(self) -> str:
        return f"{self.key}={self.target}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the routes API returns."""
        return {"listen": self.key, "service": self.service, "tag": self.tag,
                "balance": self.balance, "proxy_protocol": self.proxy_protocol,
                "max_connections": self.max_connections, "route": str(self)}


def _listen(text: str, field: str) -> HostPort:
    listen = parse_hostport(text, field)
    if listen.host.startswith("[") or not listen.host:
        raise ConfigError(f"{field}: {text!r} has no host")
    return listen


def _options(route: Route, options: Mapping[str, Any], field: str) -> Route:
    unknown = set(options) - {"balance", "proxy_protocol", "max_connections"}
    if unknown:
        raise ConfigError(f"{field}: unknown option {sorted(unknown)[0]!r} (want balance, "
                          "proxy_protocol, max_connections)")
    balance = options.get("balance") or "p2c"
    if balance not in BALANCES:
        raise ConfigError(f"{field}: balance {balance!r} is not one of {', '.join(BALANCES)}")
    proxy = options.get("proxy_protocol") or None
    if proxy is not None and proxy not in PROXY_PROTOCOLS:
        raise ConfigError(f"{field}: proxy_protocol {proxy!r} is not v1 or v2")
    limit = options.get("max_connections", 0) or 0
    if isinstance(limit, str):
        if not limit.isdigit():
            raise ConfigError(f"{field}: max_connections {limit!r} is not a number")
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or not (
            0 <= limit <= MAX_ROUTE_CONNECTIONS):
        raise ConfigError(f"{field}: max_connections must be 0-{MAX_ROUTE_CONNECTIONS}")
    return replace(route, balance=balance, proxy_protocol=proxy, max_connections=limit)


def _service(text: str, field: str) -> tuple[str, str | None]:
    name, dot, tag = text.partition(".")
    try:
        service = service_name(name, field)
    except InvalidField as exc:
        raise ConfigError(str(exc)) from None
    if dot and (not tag or any(c.isspace() or not c.isprintable() for c in tag)):
        raise ConfigError(f"{field}: tag {tag!r} is empty or has whitespace")
    return service, tag or None


def parse_target(listen: HostPort, text: str, field: str = "--route") -> Route:
    """Parse SERVICE[.TAG][?balance=…&proxy_protocol=v1|v2&max_connections=N] for `listen`."""
    service_text, _, query = text.strip().partition("?")
    service, tag = _service(service_text, field)
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise ConfigError(f"{field}: an option is given twice in {text!r}")
    return _options(Route(listen, service, tag), options, field)


def parse_route(text: str, field: str = "--route") -> Route:
    """Parse HOST:PORT=SERVICE[.TAG][?options]; raises ConfigError naming `field`."""
    listen_text, sep, target = text.strip().partition("=")
    if not sep or not target:
        raise ConfigError(f"{field}: {text!r} is not HOST:PORT=SERVICE[.TAG][?options]")
    return parse_target(_listen(listen_text, field), target, field)


def route_from_json(listen_text: str, body: object) -> Route:
    """A route from the routes API: the path's listen address and a JSON object body."""
    if not isinstance(body, Mapping):
        raise ConfigError("body: must be a JSON object with at least 'service'")
    listen = _listen(listen_text, "listen")
    if not isinstance(body.get("service"), str):
        raise ConfigError("service: required, a service name")
    service, tag = _service(body["service"], "service")
    if body.get("tag") is not None:
        if not isinstance(body["tag"], str) or tag is not None:
            raise ConfigError("tag: must be a string (and not also given as SERVICE.TAG)")
        _, tag = _service(f"x.{body['tag']}", "tag")
    options = {k: v for k, v in body.items() if k not in ("service", "tag", "listen", "route")}
    return _options(Route(listen, service, tag), options, "body")


def parse_routes_file(text: str, path: str) -> list[Route]:
    """One route per line (HOST:PORT=SERVICE…), '#' comments; duplicates are an error."""
    routes: dict[str, Route] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.partition("#")[0].strip()
        if not line:
            continue
        route = parse_route(line, f"{path}:{number}")
        if route.key in routes:
            raise ConfigError(f"{path}:{number}: {route.key} is routed twice")
        routes[route.key] = route
    return list(routes.values())


def read_routes_file(path: str) -> list[Route]:
    """Read and parse a --routes-file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"--routes-file: cannot read {path!r}: {exc.strerror}") from exc
    return parse_routes_file(text, path)
