"""Registrator's SERVICE_CHECK_* settings read into the checks an instance is registered with.

The settings (general, or per port as SERVICE_<port>_CHECK_*) are the ones Registrator reads:

- `check_http` (a path: GET `http://<address>:<port><path>`), `check_https` (the same over TLS;
  `check_tls_skip_verify` to accept any certificate), `check_tcp` (any true value: connect to
  the port), `check_script` (a shell command run in the container with `docker exec`;
  `$SERVICE_IP` and `$SERVICE_PORT` are replaced), `check_ttl` (a duration: the app reports);
- `check_interval` (default 10s), `check_timeout` (default the interval, at most 10s),
  `check_initial_status` (passing, warning or critical; default critical, as Consul),
  `check_deregister_after` (a duration; 0 or unset: never).

The address and port probed are the container's own (its IP on its network and the container
port; the advertised address on the host network), never a published host port, which
docker-proxy accepts even when the app behind it is dead. Durations are Go's (`1m30s`,
`500ms`, `1.5s`) or a bare number of seconds. A value that cannot be used is not skipped: the
instance gets a `sidecar` check, critical, whose output says which setting is wrong and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pilotfish.catalog.model import HEALTH_STATES, Check, CheckKind, Health, InvalidField
from pilotfish.sidecar.labels import PortSettings, truthy

PROBES: tuple[CheckKind, ...] = ("http", "https", "tcp", "script", "ttl")
OPTIONS = ("interval", "timeout", "initial_status", "deregister_after", "tls_skip_verify")
KNOWN = frozenset(f"check_{name}" for name in (*PROBES, *OPTIONS))
DEFAULT_INTERVAL = 10.0
MAX_TIMEOUT = 10.0  # Consul's default timeout for http and tcp checks
MIN_INTERVAL = 0.1
MAX_SECONDS = 86_400.0
SIDECAR_CHECK = "sidecar"
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class BadCheckSetting(ValueError):
    """A SERVICE_CHECK_* value that cannot be used; the message names the setting."""


@dataclass(frozen=True, slots=True)
class CheckTarget:
    """Where the checks of one port go: the container's own address and port."""

    address: str
    port: int

    @property
    def host_port(self) -> str:
        """`address:port`, with brackets around an IPv6 address."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def duration(value: str, setting: str) -> float:
    """A Go duration (`1m30s`, `500ms`) or a bare number, in seconds; raises BadCheckSetting."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match[1]) * _UNITS[match[2]]
            position = match.end()
        if not text or position != len(text):
            raise BadCheckSetting(f"SERVICE_{setting.upper()}={value[:40]!r} is not a duration "
                                  "(like 10s, 1m30s, 500ms)") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise BadCheckSetting(f"SERVICE_{setting.upper()}={value[:40]!r} must be 0-24h")
    return seconds


def check_settings(settings: PortSettings) -> dict[str, str]:
    """The SERVICE_CHECK_* settings of a port (they are not meta)."""
    return {k: v for k, v in settings.values.items() if k.startswith("check_")}


def checks(settings: PortSettings, target: CheckTarget) -> tuple[Check, ...]:
    """The checks a port's settings declare, at their initial status; a single critical
    `sidecar` check saying what is wrong when a setting cannot be used."""
    try:
        return _checks(check_settings(settings), target)
    except (BadCheckSetting, InvalidField) as exc:
        return (bad_label(str(exc)),)


def bad_label(reason: str) -> Check:
    """The check that stands for settings the sidecar could not use: critical, with why."""
    return Check(id=SIDECAR_CHECK, name="check settings", kind="sidecar", status="critical",
                 output=f"bad check setting: {reason}")


def _checks(found: dict[str, str], target: CheckTarget) -> tuple[Check, ...]:
    unknown = sorted(set(found) - KNOWN)
    if unknown:
        raise BadCheckSetting(f"SERVICE_{unknown[0].upper()} is not a check setting (known: "
                              + ", ".join(f"SERVICE_{k.upper()}" for k in sorted(KNOWN)) + ")")
    declared = [kind for kind in PROBES if _declared(kind, found.get(f"check_{kind}", ""))]
    if not declared:
        options = sorted(k for k in found if k.removeprefix("check_") in OPTIONS)
        if options:
            raise BadCheckSetting(f"SERVICE_{options[0].upper()} is set but no check is "
                                  "(SERVICE_CHECK_HTTP, _HTTPS, _TCP, _SCRIPT or _TTL)")
        return ()
    interval = DEFAULT_INTERVAL
    if found.get("check_interval", "").strip():
        interval = duration(found["check_interval"], "check_interval")
        if interval < MIN_INTERVAL:
            raise BadCheckSetting(f"SERVICE_CHECK_INTERVAL={found['check_interval']!r} is under "
                                  f"{MIN_INTERVAL}s")
    timeout = min(interval, MAX_TIMEOUT)
    if found.get("check_timeout", "").strip():
        timeout = duration(found["check_timeout"], "check_timeout")
        if timeout <= 0:
            raise BadCheckSetting("SERVICE_CHECK_TIMEOUT must be more than 0")
    status = _initial_status(found.get("check_initial_status", ""))
    deregister = 0.0
    if found.get("check_deregister_after", "").strip():
        deregister = duration(found["check_deregister_after"], "check_deregister_after")
    made = []
    for kind in declared:
        value = found[f"check_{kind}"].strip()
        if kind == "ttl":
            ttl = duration(value, "check_ttl")
            if ttl <= 0:
                raise BadCheckSetting("SERVICE_CHECK_TTL must be more than 0")
            made.append(Check(id=kind, name="TTL (reported by the app)", kind=kind,
                              status=status, ttl=ttl, deregister_after=deregister))
            continue
        where = _target(kind, value, target, truthy(found.get("check_tls_skip_verify", "")))
        made.append(Check(id=kind, name=_name(kind, where), kind=kind, status=status,
                          target=where, interval=interval, timeout=timeout,
                          deregister_after=deregister))
    return tuple(made)


def _declared(kind: str, value: str) -> bool:
    return truthy(value) if kind == "tcp" else bool(value.strip())


def _initial_status(value: str) -> Health:
    text = value.strip().lower() or "critical"
    for state in HEALTH_STATES:
        if text == state:
            return state
    raise BadCheckSetting(f"SERVICE_CHECK_INITIAL_STATUS={value[:40]!r} must be passing, "
                          "warning or critical")


def _target(kind: str, value: str, target: CheckTarget, skip_verify: bool) -> str:
    if kind in ("http", "https"):
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise BadCheckSetting(f"SERVICE_CHECK_{kind.upper()}={value[:40]!r} must be a path "
                                  "starting with '/', without spaces")
        scheme = "https+insecure" if kind == "https" and skip_verify else kind
        return f"{scheme}://{target.host_port}{value}"
    if kind == "tcp":
        return target.host_port
    return (value.replace("$SERVICE_IP", target.address)
            .replace("${SERVICE_IP}", target.address)
            .replace("$SERVICE_PORT", str(target.port))
            .replace("${SERVICE_PORT}", str(target.port)))


def _name(kind: str, where: str) -> str:
    if kind in ("http", "https"):
        return f"HTTP GET {where.replace('https+insecure://', 'https://')}"
    if kind == "tcp":
        return f"TCP connect {where}"
    return f"script {where[:200]}"
