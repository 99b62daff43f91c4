"""Intentions: which service may open connections to which, as allow/deny rules with
wildcards and a default policy, kept as one config entry every host reads.

A name is a service (`web`), a prefix (`web-*`) or everything (`*`). When several rules match
a connection, the most specific destination wins, then the most specific source (exact
beats prefix, a longer prefix beats a shorter, `*` comes last); when none matches, the
default decides. That is Consul's precedence, with prefixes between exact and `*`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pilotfish.catalog.model import InvalidField

log = logging.getLogger(__name__)

ENTRY = "intentions"  # the config entry they live in
Action = Literal["allow", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "deny")
DEFAULT_ACTION: Action = "deny"  # secure by default: a mesh service talks to no one yet
MAX_INTENTIONS = 1_000
MAX_DESCRIPTION = 128
DESCRIPTION_PATTERN = r"[ -~]{0,128}"  # printable ASCII: log lines and terminals stay sane
NAME_PATTERN = r"\*|[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|[a-z0-9][a-z0-9-]{0,61}\*"
_NAME = re.compile(NAME_PATTERN)
_DESCRIPTION = re.compile(DESCRIPTION_PATTERN)
_DECISIONS_KEPT = 4_096


def intention_name(value: object, field_name: str) -> str:
    """A source or destination: a service, a prefix ending in '*', or '*' alone."""
    if isinstance(value, str):
        value = value.lower()
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidField(field_name, f"{str(value)[:80]!r} is not a service name, a prefix "
                                       "ending in '*' (web-*), or '*'")
    return value


def action(value: object, field_name: str = "action") -> Action:
    """'allow' or 'deny', or InvalidField."""
    if value not in ACTIONS:
        raise InvalidField(field_name, "must be 'allow' or 'deny'")
    return value


def specificity(name: str) -> tuple[int, int]:
    """How specific a name is: exact (2), a prefix by its length (1), '*' (0)."""
    if name == "*":
        return (0, 0)
    if name.endswith("*"):
        return (1, len(name) - 1)
    return (2, len(name))


def matches(name: str, service: str) -> bool:
    """Whether a source or destination name covers `service`."""
    if name.endswith("*"):
        return service.startswith(name[:-1])
    return name == service


@dataclass(frozen=True, slots=True)
class Intention:
    """One rule: connections from `source` to `destination` are allowed or denied."""

    source: str
    destination: str
    action: Action
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", intention_name(self.source, "source"))
        object.__setattr__(self, "destination",
                           intention_name(self.destination, "destination"))
        action(self.action)
        if not isinstance(self.description, str) or not _DESCRIPTION.fullmatch(self.description):
            raise InvalidField("description",
                               f"at most {MAX_DESCRIPTION} printable ASCII characters")

    @property
    def key(self) -> tuple[str, str]:
        """A rule is known by its source and destination: one rule per pair."""
        return (self.source, self.destination)

    def to_dict(self) -> dict[str, str]:
        """The stored and API form."""
        return {"source": self.source, "destination": self.destination, "action": self.action,
                "description": self.description}


@dataclass(frozen=True)
class Intentions:
    """Every rule and the default, at the config entry's version; decides connections."""

    rules: tuple[Intention, ...] = ()
    default: Action = DEFAULT_ACTION
    version: int = 0
    _decided: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False,
                                                  repr=False)

    def __post_init__(self) -> None:
        action(self.default, "default")
        if len(self.rules) > MAX_INTENTIONS:
            raise InvalidField("intentions", f"at most {MAX_INTENTIONS} rules")
        keys = [rule.key for rule in self.rules]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})[0]
            raise InvalidField("intentions", f"{twice[0]} -> {twice[1]} is given twice")
        ordered = sorted(self.rules, key=lambda r: (r.destination, r.source))
        object.__setattr__(self, "rules", tuple(ordered))

    def rule_for(self, source: str, destination: str) -> Intention | None:
        """The rule that decides a connection (the most specific match), if any."""
        best: Intention | None = None
        best_rank = ((-1, -1), (-1, -1))
        for rule in self.rules:
            if matches(rule.destination, destination) and matches(rule.source, source):
                rank = (specificity(rule.destination), specificity(rule.source))
                if rank > best_rank:
                    best, best_rank = rule, rank
        return best

    def allows(self, source: str, destination: str) -> bool:
        """Whether `source` may open a connection to `destination`."""
        key = (source, destination)
        decided = self._decided.get(key)
        if decided is None:
            rule = self.rule_for(source, destination)
            decided = (rule.action if rule is not None else self.default) == "allow"
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = decided
        return decided

    def get(self, source: str, destination: str) -> Intention | None:
        """The rule stored for exactly this pair."""
        return next((r for r in self.rules if r.key == (source, destination)), None)

    def put(self, rule: Intention) -> Intentions:
        """These intentions with `rule` added or replacing the one for its pair."""
        kept = [r for r in self.rules if r.key != rule.key]
        return replace(self, rules=(*kept, rule), _decided={})

    def without(self, source: str, destination: str) -> Intentions:
        """These intentions without the rule for that pair."""
        return replace(self, rules=tuple(r for r in self.rules if r.key != (source, destination)),
                       _decided={})

    def to_value(self) -> dict[str, Any]:
        """The config entry's document."""
        return {"default": self.default, "intentions": [r.to_dict() for r in self.rules]}

    def to_dict(self) -> dict[str, Any]:
        """The API's answer: the document and its version."""
        return {**self.to_value(), "version": self.version}

    @classmethod
    def from_value(cls, value: Mapping[str, Any], version: int = 0) -> Intentions:
        """Read a document (the stored or a PUT one); InvalidField names what is wrong."""
        if not isinstance(value, Mapping):
            raise InvalidField("intentions", "must be an object")
        unknown = sorted(set(value) - {"default", "intentions"})
        if unknown:
            raise InvalidField(unknown[0], "unknown key (known: default, intentions)")
        items = value.get("intentions", [])
        if not isinstance(items, list):
            raise InvalidField("intentions", "must be a list")
        return cls(tuple(_rule(item, n) for n, item in enumerate(items)),
                   action(value.get("default", DEFAULT_ACTION), "default"), version)


def _rule(item: object, number: int) -> Intention:
    where = f"intentions[{number}]"
    if not isinstance(item, Mapping):
        raise InvalidField(where, "must be an object")
    unknown = sorted(set(item) - {"source", "destination", "action", "description"})
    if unknown:
        raise InvalidField(f"{where}.{unknown[0]}", "unknown key")
    try:
        return Intention(item.get("source"), item.get("destination"),  # type: ignore[arg-type]
                         item.get("action"), item.get("description", ""))  # type: ignore[arg-type]
    except InvalidField as exc:
        raise InvalidField(f"{where}.{exc.field}", exc.message) from None


def stored(value: Mapping[str, Any], version: int) -> Intentions:
    """The intentions a host enforces from what the backend holds: a document no longer valid
    (written by hand, by another version) denies everything rather than guess (logged)."""
    if version == 0:
        return Intentions()
    try:
        return Intentions.from_value(value, version)
    except InvalidField as exc:
        log.error("intentions at version %d are not valid (%s); denying every connection "
                  "until they are fixed", version, str(exc)[:200])
        return Intentions((), "deny", version)

