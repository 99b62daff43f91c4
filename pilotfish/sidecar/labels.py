"""Registrator's SERVICE_* settings, read from a container's env and labels.

Every `SERVICE_<KEY>=value` in the env or the labels is a setting; a label beats the env for
the same key. `SERVICE_<port>_<KEY>` applies to one exposed port only and beats the general
`SERVICE_<KEY>` for that port. Keys are compared lower-case, as Registrator does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PREFIX = "SERVICE_"
RESERVED = frozenset({"name", "tags", "id", "weight", "ignore", "port"})
"""Keys the sidecar acts on; every other key goes into the instance's meta."""


def raw_settings(env: Iterable[str] | None, labels: Mapping[str, str] | None) -> dict[str, str]:
    """Every SERVICE_* key (without the prefix, lower-case) to its value; labels win."""
    settings: dict[str, str] = {}
    for item in env or ():
        key, equals, value = item.partition("=")
        if equals and key.startswith(PREFIX) and len(key) > len(PREFIX):
            settings[key[len(PREFIX):].lower()] = value
    for key, value in (labels or {}).items():
        if key.startswith(PREFIX) and len(key) > len(PREFIX):
            settings[key[len(PREFIX):].lower()] = value
    return settings


@dataclass(frozen=True, slots=True)
class PortSettings:
    """The settings that apply to one port, and which of them were set for that port."""

    values: Mapping[str, str]
    from_port: frozenset[str]

    def get(self, key: str) -> str:
        """The value of a setting, "" when unset."""
        return self.values.get(key, "")

    @property
    def meta(self) -> dict[str, str]:
        """Settings that are not the sidecar's own: they become the instance's meta (the
        check_* settings are checks, not meta)."""
        return {k: v for k, v in self.values.items()
                if k not in RESERVED and not k.startswith("check_")}


def port_settings(raw: Mapping[str, str], port: int | str) -> PortSettings:
    """The settings for one exposed port: general ones, overridden by `<port>_` ones; keys
    that name another port are left out."""
    general: dict[str, str] = {}
    specific: dict[str, str] = {}
    for key, value in raw.items():
        head, underscore, rest = key.partition("_")
        if underscore and rest and head.isdigit():
            if head == str(port):
                specific[rest] = value
        else:
            general[key] = value
    return PortSettings({**general, **specific}, frozenset(specific))


def listed(value: str) -> tuple[str, ...]:
    """A comma-separated setting (SERVICE_TAGS, SERVICE_PORT) as its non-empty items."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def truthy(value: str) -> bool:
    """Whether a flag-like setting (SERVICE_IGNORE) is set: any value but "", 0, false, no."""
    return value.strip().lower() not in ("", "0", "false", "no")
