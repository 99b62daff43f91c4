"""Config entries: small named JSON documents every host reads from the catalog's backend
(the mesh's intentions are one), replaced whole with a check-and-set on their version.

Why a document per name, and not records: a reader needs the whole set at once (a policy
decides on every rule), it is small, and a check-and-set on one version keeps two writers
from losing each other's changes on every backend alike. The backends store it as they store
everything else: an etcd key, a znode, a Consul KV key, a dict; the http:// backend asks the
registry API (/v1/config/{name}).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfish.catalog.model import InvalidField

log = logging.getLogger(__name__)

ENTRY_NAME_PATTERN = r"[a-z][a-z0-9-]{0,62}"
MAX_ENTRY_BYTES = 384 * 1024  # under every backend's value limit (Consul KV: 512 KiB)
MAX_VERSION = 2**53 - 1  # the largest integer every JSON reader holds exactly
_NAME = re.compile(ENTRY_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """A named document and its version (0: never written, or removed)."""

    name: str
    value: Mapping[str, Any] = field(default_factory=dict)
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The API's form."""
        return {"name": self.name, "value": dict(self.value), "version": self.version}


def entry_name(value: object) -> str:
    """A config entry's name (a-z, 0-9, '-', starting with a letter), or InvalidField."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidField("name", f"{str(value)[:80]!r} is not a config entry name: 1-63 of "
                                   "a-z, 0-9 and '-', starting with a letter")
    return value


def entry_version(value: object) -> int:
    """A version to compare against (0: the entry must not exist yet), or InvalidField."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise InvalidField("version", "must be a whole number from 0 (not written yet)")
    return value


def encode_entry(value: object) -> bytes:
    """The stored form of a document (compact JSON), or InvalidField('value')."""
    if not isinstance(value, Mapping):
        raise InvalidField("value", "must be a JSON object")
    try:
        data = json.dumps(value, separators=(",", ":"), sort_keys=True,
                          allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidField("value", f"is not JSON: {exc}") from None
    if len(data) > MAX_ENTRY_BYTES:
        raise InvalidField("value", f"is {len(data)} bytes as JSON; at most {MAX_ENTRY_BYTES}")
    return data


def decode_entry(name: str, raw: bytes | None, version: int) -> ConfigEntry:
    """A stored document read back; one that is not a JSON object reads as empty (logged), at
    its version, so that a check-and-set can still replace it."""
    if raw is None or version == 0:
        return ConfigEntry(name)
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        log.warning("config entry %r is not a JSON object; reading it as empty: %r", name,
                    bytes(raw[:100]))
        value = {}
    return ConfigEntry(name, value, version)
