"""A compiled `?filter=`: a tree of predicates over JSON items, evaluated one item at a time
or, over a big answer, one operand at a time across the items still undecided (so `and`/`or`
short-circuit per item as usual), in slices that leave the event loop free, within
FILTER_BUDGET seconds of work per answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pilotfish.registry.consul.pacing import OverBudget, Pacer
from pilotfish.registry.consul.regex import LinearRegex, PatternError
from pilotfish.registry.consul.selectors import FilterError, Item, Selector

Test = Callable[[Item], bool]

FILTER_BUDGET = 1.0
"""Seconds of work one answer's filter may take (about 300x a simple filter over 2,000
instances); past it the answer is a 400 that says so, not minutes of a busy process."""


class Node(Protocol):
    """One operand of the expression: tested on one item, or selected among many."""

    def holds(self, item: Item) -> bool: ...

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class Leaf:
    """One comparison (`Service.Port == 80`)."""

    test: Test

    def holds(self, item: Item) -> bool:
        return self.test(item)

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]:
        kept = []
        for index in chosen:
            if pacer.due():
                await pacer.pause()
            if self.test(items[index]):
                kept.append(index)
        return kept


@dataclass(frozen=True, slots=True)
class AllOf:
    """`a and b and ...`: the items every part keeps, narrowing part by part."""

    parts: tuple[Node, ...]

    def holds(self, item: Item) -> bool:
        return all(part.holds(item) for part in self.parts)

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]:
        for part in self.parts:
            if not chosen:
                break
            chosen = await part.among(items, chosen, pacer)
        return chosen


@dataclass(frozen=True, slots=True)
class AnyOf:
    """`a or b or ...`: a later part looks only at the items no earlier one kept."""

    parts: tuple[Node, ...]

    def holds(self, item: Item) -> bool:
        return any(part.holds(item) for part in self.parts)

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]:
        undecided = chosen
        hits: set[int] = set()
        for part in self.parts:
            if not undecided:
                break
            found = set(await part.among(items, undecided, pacer))
            if found:
                hits |= found
                undecided = [index for index in undecided if index not in found]
        return [index for index in chosen if index in hits]


@dataclass(frozen=True, slots=True)
class Negated:
    """`not a`."""

    part: Node

    def holds(self, item: Item) -> bool:
        return not self.part.holds(item)

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]:
        found = set(await self.part.among(items, chosen, pacer))
        return [index for index in chosen if index not in found]


class Filter:
    """A compiled ?filter=: `filter(item)` tests one item, `await filter.select(items)` many."""

    def __init__(self, root: Node | None, text: str = "") -> None:
        self._root = root
        self.text = text

    def __call__(self, item: Item) -> bool:
        return self._root is None or self._root.holds(item)

    async def select(self, items: Sequence[Item], budget: float = FILTER_BUDGET) -> list[Item]:
        """The items the filter keeps, in order, computed in slices that leave the loop free.

        FilterError when that takes more than `budget` seconds of work.
        """
        if self._root is None:
            return list(items)
        pacer = Pacer(budget)
        try:
            kept = await self._root.among(items, list(range(len(items))), pacer)
        except OverBudget as exc:
            raise FilterError(f"evaluating it over {len(items)} items {exc}: simplify "
                              "the expression") from None
        return [items[index] for index in kept]


def _scalar(selector: Selector, value: str, at: int) -> Any:
    kind = selector.shape.kind
    if kind == "bool":
        if value not in ("true", "false"):
            raise FilterError(f"{selector.name} is a boolean: compare it with true or false "
                              f"(position {at})")
        return value == "true"
    if kind in ("int", "float"):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            raise FilterError(f"{selector.name} is a number, {value!r} is not "
                              f"(position {at})") from None
    if kind == "str":
        return value
    raise FilterError(f"{selector.name} is a {kind}: use contains, in or is empty, not == "
                      f"(position {at})")


def equals(selector: Selector, value: str, negate: bool, at: int) -> Test:
    """`selector == value` (`!=` negated), the value read as the selector's type."""
    wanted = _scalar(selector, value, at)
    return lambda item: (wanted in selector.values(item)) != negate


def is_empty(selector: Selector, negate: bool, at: int) -> Test:
    """`selector is empty` (`is not empty` negated)."""
    if selector.shape.kind not in ("list", "map", "str", "null"):
        raise FilterError(f"is empty needs a list, map or string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    return lambda item: all(not v for v in selector.values(item)) != negate


def contains(selector: Selector, value: str, negate: bool, at: int) -> Test:
    """`selector contains value`, `value in selector` (and their `not` forms)."""
    kind = selector.shape.kind
    if kind not in ("list", "map", "str"):
        raise FilterError(f"contains/in needs a list, map or string; {selector.name} is a "
                          f"{kind} (position {at})")
    if kind == "list" and selector.shape.item is not None and selector.shape.item.kind != "str":
        raise FilterError(f"contains/in works on lists of strings; {selector.name} is not one "
                          f"(position {at})")

    def holds(container: Any) -> bool:
        return value in container if container is not None else False

    return lambda item: any(holds(v) for v in selector.values(item)) != negate


class Pattern:
    """A `matches` operand: checked while parsing, compiled after (see compile_filter_paced)."""

    def __init__(self, pattern: str, at: int) -> None:
        self.pattern, self.at = pattern, at
        self._regex: LinearRegex | None = None

    def compile(self) -> None:
        """Compile the RE2 pattern now (FilterError naming its position if it is not one)."""
        try:
            self._regex = LinearRegex(self.pattern)
        except PatternError as exc:
            raise FilterError(f"matches: {exc} (position {self.at})") from None

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text`."""
        if self._regex is None:
            self.compile()
        assert self._regex is not None
        return self._regex.search(text)


def matches(selector: Selector, value: str, negate: bool, at: int,
            patterns: list[Pattern]) -> Test:
    """`selector matches value` (`not matches` negated); the pattern joins `patterns`, to be
    compiled once the whole expression has parsed."""
    if selector.shape.kind != "str":
        raise FilterError(f"matches needs a string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    pattern = Pattern(value, at)
    patterns.append(pattern)
    return lambda item: any(
        isinstance(v, str) and pattern.search(v) for v in selector.values(item)
    ) != negate

