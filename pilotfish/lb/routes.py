"""Routes: which listen address balances over which service, parsed from flags, files and JSON.

Every value is checked whole and in ASCII, and every refusal is an InvalidRoute naming the
field (and, for a file, the line): a route is either exactly what was written or an error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

from pilotfish.catalog.model import TAG_PATTERN, InvalidField, service_name
from pilotfish.config import ConfigError, HostPort

BALANCES = ("p2c", "round_robin", "least_conn", "weighted", "hash")
"""Balancing algorithms a route can name (`?balance=`); p2c is the default."""

PROXY_PROTOCOLS = ("v1", "v2")
MAX_ROUTE_CONNECTIONS = 1_000_000
OPTIONS = ("balance", "proxy_protocol", "max_connections")
MAX_SHOWN = 80  # characters of a refused value quoted back: messages and log lines stay short
MAX_ERRORS = 5  # a file's mistakes listed in one message
_TAG = re.compile(TAG_PATTERN)
_SERVICE_LENGTH = 63


def shown(value: object) -> str:
    """A refused value as an error message quotes it: repr, cut to MAX_SHOWN characters."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


class InvalidRoute(ConfigError):
    """A route refused; `field` names what is wrong (listen, service, tag, balance, ...)."""

    def __init__(self, field: str, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.message = message

    def at(self, where: str) -> InvalidRoute:
        """The same refusal, said of a place (a flag, or FILE:LINE)."""
        return InvalidRoute(self.field, self.message, where)


@dataclass(frozen=True, slots=True)
class Route:
    """One listener: clients connecting to `listen` reach an instance of `service` (with `tag`)."""

    listen: HostPort
    service: str
    tag: str | None = None
    balance: str = "p2c"
    proxy_protocol: str | None = None
    max_connections: int = 0  # 0: only the global limit applies
    origin: str = field(default="", compare=False, repr=False)  # --route, FILE:LINE, the API

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


def parse_listen(text: str, canonical: bool = False) -> HostPort:
    """An IP address and a port 1-65535: `A.B.C.D:PORT` or `[V6]:PORT`.

    Names are refused (what they resolve to can change, and a route is known by its
    address), and so is port 0: a route is the fixed address its clients dial (HAProxy
    refuses `bind :0` too), and a random port would make PUT on the same path bind a new one
    each time. `canonical` (the API's paths): only the one way to write each address.
    """
    if "%" in text:
        raise InvalidRoute("listen", f"listen: {shown(text)} has a '%': percent-encoded twice, "
                                     "or an IPv6 zone (not supported)")
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5:
        raise InvalidRoute("listen", f"listen: {shown(text)} is not HOST:PORT (127.0.0.1:9000 "
                                     "or [::1]:9000)")
    number = int(port)
    if number == 0:
        raise InvalidRoute("listen", f"listen: {shown(text)}: port 0 would bind a random port; "
                                     "give the port clients dial")
    if number > 65535:
        raise InvalidRoute("listen", f"listen: {shown(text)} is not HOST:PORT with a port "
                                     "1-65535")
    if not host and not bracketed and not canonical:
        host = "127.0.0.1"  # ":PORT" in flags and files, as everywhere else
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidRoute("listen", f"listen: {shown(host)} is not an IP address (a route "
                                     "listens on one: 127.0.0.1, [::1], 0.0.0.0)") from None
    if bracketed != (address.version == 6):
        raise InvalidRoute("listen", f"listen: {shown(text)}: an IPv6 address goes in "
                                     "brackets, an IPv4 one does not")
    listen = HostPort(str(address), number)
    if canonical and str(listen) != text:
        raise InvalidRoute("listen", f"listen: write {shown(text)} as {listen}")
    return listen


def overlaps(one: HostPort, other: HostPort) -> bool:
    """Whether two listen addresses cannot both be bound: the same, or a wildcard and an
    address of its family on the same port."""
    if one.port != other.port:
        return False
    if one.host == other.host:
        return True
    a, b = ipaddress.ip_address(one.host), ipaddress.ip_address(other.host)
    return a.version == b.version and (a.is_unspecified or b.is_unspecified)


def _service(value: object, field: str = "service") -> tuple[str, str | None]:
    """SERVICE[.TAG]: the canonical service name and the tag, if any."""
    if not isinstance(value, str):
        raise InvalidRoute(field, f"{field}: must be a string, a service name")
    name, dot, tag = value.partition(".")
    if len(name) > _SERVICE_LENGTH:
        raise InvalidRoute(field, f"{field}: {shown(name)} is longer than a DNS label "
                                  f"({_SERVICE_LENGTH} characters)")
    try:
        service = service_name(name, field)
    except InvalidField as exc:
        raise InvalidRoute(field, str(exc)) from None
    if dot:
        _tag(tag, field)
    return service, tag if dot else None


def _tag(value: object, field: str = "tag") -> str:
    if not isinstance(value, str) or not _TAG.fullmatch(value):
        raise InvalidRoute(field, f"{field}: tag {shown(value)} is not 1-255 printable ASCII "
                                  "characters without spaces")
    return value


def _balance(value: object) -> str:
    if not isinstance(value, str) or value not in BALANCES:
        raise InvalidRoute("balance", f"balance: {shown(value)} is not one of "
                                      f"{', '.join(BALANCES)}")
    return value


def _proxy_protocol(value: object) -> str:
    if not isinstance(value, str) or value not in PROXY_PROTOCOLS:
        raise InvalidRoute("proxy_protocol", f"proxy_protocol: {shown(value)} is not v1 or v2 "
                                             "(leave it out for none)")
    return value


def _max_connections(value: object, from_text: bool) -> int:
    if from_text and isinstance(value, str) and value.isascii() and value.isdigit() and \
            len(value) <= 7:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value <= MAX_ROUTE_CONNECTIONS):
        raise InvalidRoute("max_connections", f"max_connections: {shown(value)} is not a whole "
                                              f"number 0-{MAX_ROUTE_CONNECTIONS}")
    return value


def _options(route: Route, options: Mapping[str, object], from_text: bool) -> Route:
    """Apply balance, proxy_protocol and max_connections (a None value: the default);
    `from_text`: max_connections comes as ASCII digits (JSON gives an integer)."""
    for name in options:
        if name not in OPTIONS:
            raise InvalidRoute(name[:MAX_SHOWN], f"unknown option {shown(name)} (want "
                                                 f"{', '.join(OPTIONS)})")
    balance = options.get("balance")
    proxy = options.get("proxy_protocol")
    limit = options.get("max_connections")
    return replace(route, balance="p2c" if balance is None else _balance(balance),
                   proxy_protocol=None if proxy is None else _proxy_protocol(proxy),
                   max_connections=0 if limit is None else _max_connections(limit, from_text))


def parse_target(listen: HostPort, text: str, where: str = "--route") -> Route:
    """Parse SERVICE[.TAG][?balance=…&proxy_protocol=v1|v2&max_connections=N] for `listen`."""
    service_text, _, query = text.strip().partition("?")
    try:
        service, tag = _service(service_text)
        pairs = parse_qsl(query, keep_blank_values=True)
        options = dict(pairs)
        if len(options) != len(pairs):
            raise InvalidRoute("route", f"an option is given twice in {shown(text)}")
        return _options(Route(listen, service, tag, origin=where), options, from_text=True)
    except InvalidRoute as exc:
        raise exc.at(where) from None


def parse_route(text: str, where: str = "--route") -> Route:
    """Parse HOST:PORT=SERVICE[.TAG][?options]; raises InvalidRoute naming `where`."""
    listen_text, sep, target = text.strip().partition("=")
    if not sep or not target:
        raise InvalidRoute("route", f"{shown(text)} is not HOST:PORT=SERVICE[.TAG][?options]",
                           where)
    try:
        listen = parse_listen(listen_text.strip())
    except InvalidRoute as exc:
        raise exc.at(where) from None
    return parse_target(listen, target, where)


def route_from_json(listen_text: str, body: object) -> Route:
    """A route from the routes API: the path's listen address and a JSON object body.

    Strict types: strings where a string goes, an integer for max_connections; null is the
    same as leaving a field out. `listen` and `route` (what GET answers) may come back as
    they were read.
    """
    listen = parse_listen(listen_text, canonical=True)
    if not isinstance(body, Mapping):
        raise InvalidRoute("body", "body: must be a JSON object with at least 'service'")
    if "service" not in body:
        raise InvalidRoute("service", "service: required, a service name")
    service, tag = _service(body["service"])
    if body.get("tag") is not None:
        if tag is not None:
            raise InvalidRoute("tag", "tag: given both here and as SERVICE.TAG")
        tag = _tag(body["tag"])
    echoed = body.get("listen")
    if echoed is not None and echoed != str(listen):
        raise InvalidRoute("listen", f"listen: the body says {shown(echoed)}, the path "
                                     f"{listen}")
    if body.get("route") is not None and not isinstance(body["route"], str):
        raise InvalidRoute("route", "route: a string (what GET answers), or leave it out")
    options = {k: v for k, v in body.items() if k not in ("service", "tag", "listen", "route")}
    return _options(Route(listen, service, tag, origin="the API"), options, from_text=False)


def check_overlap(route: Route, others: Iterable[Route]) -> None:
    """Refuse `route` when its listen address cannot be bound beside one of `others`."""
    for other in others:
        if overlaps(route.listen, other.listen):
            what = "is routed twice" if route.key == other.key else f"overlaps {other.key}"
            raise InvalidRoute("listen", f"listen: {route.key} {what} (also {other.origin})",
                               route.origin)


def parse_routes_file(text: str, path: str) -> list[Route]:
    """One route per line (HOST:PORT=SERVICE…), '#' comments; the whole file is checked and
    every mistake (up to MAX_ERRORS) named with its FILE:LINE in one InvalidRoute."""
    routes: list[Route] = []
    by_port: dict[int, list[Route]] = {}
    errors: list[InvalidRoute] = []
    for number, line in enumerate(text.split("\n"), 1):  # numbered as editors number them
        line = line.partition("#")[0].strip()
        if not line:
            continue
        try:
            route = parse_route(line, f"{path}:{number}")
            check_overlap(route, by_port.get(route.listen.port, ()))
        except InvalidRoute as exc:
            errors.append(exc)
            continue
        routes.append(route)
        by_port.setdefault(route.listen.port, []).append(route)
    if errors:
        more = len(errors) - MAX_ERRORS
        message = "; ".join(str(e) for e in errors[:MAX_ERRORS]) + (
            f"; and {more} more" if more > 0 else "")
        raise InvalidRoute(errors[0].field, message)
    return routes


def read_routes_file(path: str) -> list[Route]:
    """Read and parse a --routes-file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"--routes-file: cannot read {path!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--routes-file {path}: not UTF-8 text (byte {exc.start})") from None
    return parse_routes_file(text, path)
