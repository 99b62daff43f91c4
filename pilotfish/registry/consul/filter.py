"""Consul's `?filter=` expressions (the go-bexpr language), for the selectors pilotfish can answer.

Supported: `==`, `!=`, `contains`, `not contains`, `in`, `not in`, `is empty`, `is not empty`,
`matches`, `not matches`, joined with `and`, `or`, `not` and parentheses; selectors with `.` or
`["key"]` (`Service.Meta.env`, `ServiceMeta["a.b"]`); values quoted with "" or backticks, numbers,
or bare words. Selectors are checked against the endpoint's JSON shape, so a misspelt one is a 400
even when the answer is empty. Through a list of objects (`Checks.Status`) a positive match needs
one element to match, and its negation none. Anything else is a `FilterError` (a 400 naming the
position), never a silently empty answer.

`matches` is RE2 (pilotfish.registry.consul.regex), linear as Consul's. Over a big answer the
expression is evaluated one operand at a time across the items still undecided (so `and`/`or`
short-circuit per item as usual), in slices that leave the event loop free (`Filter.select`),
within FILTER_BUDGET seconds of work per answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pilotfish.registry.consul.pacing import OverBudget, Pacer
from pilotfish.registry.consul.regex import LinearRegex, PatternError

Item = Mapping[str, Any]
Test = Callable[[Item], bool]

MAP_FIELDS = frozenset({"Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses",
                        "ServiceTaggedAddresses"})
"""Fields whose keys are user data (any key may be selected), not a fixed structure."""

MAX_FILTER = 4096
MAX_DEPTH = 64
FILTER_BUDGET = 1.0
"""Seconds of work one answer's filter may take (about 300x a simple filter over 2,000
instances); past it the answer is a 400 that says so, not minutes of a busy process."""
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>==|!=|\(|\)|\[|\]|\.)
  | (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_\-]*)
""", re.VERBOSE)
_KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "matches", "is", "empty"})


class FilterError(ValueError):
    """An expression pilotfish cannot evaluate; the message says what and where."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    at: int


def _scan(text: str) -> Iterator[_Token]:
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FilterError(f"unexpected character {text[at]!r} at position {at}")
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            yield _Token("keyword" if kind == "word" and word in _KEYWORDS else kind, word, at)
        at = match.end()
    yield _Token("end", "", len(text))


async def _scan_paced(text: str) -> list[_Token]:
    pacer = Pacer()
    tokens = []
    for token in _scan(text):
        tokens.append(token)
        if pacer.due():
            await pacer.pause()
    return tokens


# The shape a selector walks: "struct" (fixed fields), "map" (user keys), "list", or a scalar.


@dataclass(frozen=True, slots=True)
class Shape:
    """What a selector can reach in an endpoint's JSON items (learned from an example item)."""

    kind: str  # struct | map | list | str | int | bool | float | null
    fields: Mapping[str, Shape] | None = None  # struct fields
    item: Shape | None = None  # map values and list items

    @classmethod
    def of(cls, value: Any, is_map: bool = False) -> Shape:
        """The shape of an example value; dicts named in MAP_FIELDS are maps."""
        if isinstance(value, Mapping):
            if is_map:
                first = next(iter(value.values()), "")
                return cls("map", item=cls.of(first))
            return cls("struct", fields={k: cls.of(v, k in MAP_FIELDS) for k, v in value.items()})
        if isinstance(value, list):
            return cls("list", item=cls.of(value[0] if value else ""))
        if value is None:
            return cls("null")  # an unset list, map or object: only `is empty` applies
        if isinstance(value, bool):
            return cls("bool")
        if isinstance(value, int):
            return cls("int")
        if isinstance(value, float):
            return cls("float")
        return cls("str")


@dataclass(frozen=True, slots=True)
class _Selector:
    path: tuple[str, ...]
    steps: tuple[str, ...]  # per part: "field" | "key" | "each" (fan out over a list)
    shape: Shape
    fans_out: bool

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def values(self, item: Item) -> list[Any]:
        """Every value the selector reaches in one item (empty when a map key is absent)."""
        if not self.fans_out:  # the common case, kept fast: one value or none
            value: Any = item
            for part in self.path:
                # items are JSON objects (dicts); the ABC check costs 3x as much per step
                if not (type(value) is dict or isinstance(value, Mapping)) or part not in value:
                    return []
                value = value[part]
            return [value]
        current: list[Any] = [item]
        for part, step in zip(self.path, self.steps, strict=True):
            following: list[Any] = []
            for value in current:
                if step == "each":
                    for element in value or ():
                        if isinstance(element, Mapping) and part in element:
                            following.append(element[part])
                elif isinstance(value, Mapping) and part in value:
                    following.append(value[part])
            current = following
        return current


def _resolve(path: Sequence[str], root: Shape, at: int) -> _Selector:
    shape = root
    steps: list[str] = []
    fans_out = False
    for part in path:
        if shape.kind == "list" and shape.item is not None and shape.item.kind == "struct":
            shape, fans_out = shape.item, True
            steps.append("each")
            field = (shape.fields or {}).get(part)
        elif shape.kind == "struct":
            steps.append("field")
            field = (shape.fields or {}).get(part)
        elif shape.kind == "map":
            steps.append("key")
            field = shape.item
        else:
            field = None
        if field is None:
            raise FilterError(f"selector {'.'.join(path)!r} at position {at} is not valid here")
        shape = field
    return _Selector(tuple(path), tuple(steps), shape, fans_out)


class _Node(Protocol):
    """One operand of the expression: tested on one item, or selected among many."""

    def holds(self, item: Item) -> bool: ...

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class _Leaf:
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
class _All:
    parts: tuple[_Node, ...]

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
class _Any:
    parts: tuple[_Node, ...]

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
class _Not:
    part: _Node

    def holds(self, item: Item) -> bool:
        return not self.part.holds(item)

    async def among(self, items: Sequence[Item], chosen: list[int],
                    pacer: Pacer) -> list[int]:
        found = set(await self.part.among(items, chosen, pacer))
        return [index for index in chosen if index not in found]


class Filter:
    """A compiled ?filter=: `filter(item)` tests one item, `await filter.select(items)` many."""

    def __init__(self, root: _Node | None, text: str = "") -> None:
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


class _Parser:
    def __init__(self, tokens: list[_Token], root: Shape) -> None:
        self.tokens = tokens
        self.pos = 0
        self.root = root
        self.depth = 0
        self.patterns: list[_Pattern] = []

    def peek(self, offset: int = 0) -> _Token:
        try:
            return self.tokens[self.pos + offset]
        except IndexError:  # past the end: the end token again
            return self.tokens[-1]

    def take(self) -> _Token:
        token = self.peek()
        self.pos += 1
        return token

    def accept(self, text: str) -> bool:
        if self.peek().text == text and self.peek().kind in ("keyword", "op"):
            self.pos += 1
            return True
        return False

    def expect(self, text: str) -> None:
        if not self.accept(text):
            token = self.peek()
            found = repr(token.text) if token.kind != "end" else "the end"
            raise FilterError(f"expected {text!r} at position {token.at}, found {found}")

    def parse(self) -> _Node:
        predicate = self.disjunction()
        if self.peek().kind != "end":
            token = self.peek()
            raise FilterError(f"unexpected {token.text!r} at position {token.at}")
        return predicate

    def disjunction(self) -> _Node:
        parts = [self.conjunction()]
        while self.accept("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else _Any(tuple(parts))

    def conjunction(self) -> _Node:
        parts = [self.unary()]
        while self.accept("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else _All(tuple(parts))

    def unary(self) -> _Node:
        if self.peek().text in ("not", "(") and self.peek().kind in ("keyword", "op"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"more than {MAX_DEPTH} nested 'not' or '(' at position "
                                  f"{self.peek().at}")
            try:
                if self.accept("not"):
                    return _Not(self.unary())
                self.expect("(")
                inner = self.disjunction()
                self.expect(")")
                return inner
            finally:
                self.depth -= 1
        return _Leaf(self.match())

    def selector(self) -> _Selector:
        start = self.peek()
        if start.kind != "word":
            found = repr(start.text) if start.kind != "end" else "the end"
            raise FilterError(f"expected a selector at position {start.at}, found {found}")
        path = [self.take().text]
        while True:
            if self.accept("."):
                token = self.take()
                if token.kind not in ("word", "keyword"):
                    raise FilterError(f"expected a name after '.' at position {token.at}")
                path.append(token.text)
            elif self.accept("["):
                token = self.take()
                if token.kind != "string":
                    raise FilterError(f"expected a quoted key in [] at position {token.at}")
                path.append(_unquote(token))
                self.expect("]")
            else:
                return _resolve(path, self.root, start.at)

    def value(self) -> str:
        token = self.take()
        if token.kind == "string":
            return _unquote(token)
        if token.kind in ("number", "word"):
            text = token.text
            while token.kind == "word" and self.accept("."):  # a bare dotted word
                text += "." + self.take().text
            return text
        found = repr(token.text) if token.kind != "end" else "the end"
        raise FilterError(f"expected a value at position {token.at}, found {found}")

    def match(self) -> Test:
        first = self.peek()
        # `<value> [not] in <selector>`: look ahead for `in` after one operand
        if first.kind in ("string", "number") or self._value_before_in():
            value = self.value()
            negate = self.accept("not")
            self.expect("in")
            return _contains(self.selector(), value, negate, first.at)
        selector = self.selector()
        at = self.peek().at
        if self.accept("=="):
            return _equals(selector, self.value(), False, at)
        if self.accept("!="):
            return _equals(selector, self.value(), True, at)
        if self.accept("is"):
            negate = self.accept("not")
            self.expect("empty")
            return _empty(selector, negate, at)
        negate = self.accept("not")
        if self.accept("contains"):
            return _contains(selector, self.value(), negate, at)
        if self.accept("matches"):
            return _matches(selector, self.value(), negate, at, self.patterns)
        token = self.peek()
        found = repr(token.text) if token.kind != "end" else "the end"
        raise FilterError(f"unsupported operator {found} at position {token.at}: use ==, !=, "
                          "contains, in, is empty, matches (optionally with not)")

    def _value_before_in(self) -> bool:
        """Whether a bare word (possibly dotted) is followed by `in` or `not in`."""
        offset = 0
        if self.peek().kind != "word":
            return False
        while self.peek(offset + 1).text == "." and self.peek(offset + 2).kind == "word":
            offset += 2
        after = self.peek(offset + 1)
        return after.text == "in" or (after.text == "not" and self.peek(offset + 2).text == "in")


def _unquote(token: _Token) -> str:
    if token.text.startswith("`"):
        return token.text[1:-1]
    try:
        value = json.loads(token.text)
    except ValueError:
        raise FilterError(f"bad string literal at position {token.at}") from None
    assert isinstance(value, str)
    return value


def _scalar(selector: _Selector, value: str, at: int) -> Any:
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


def _equals(selector: _Selector, value: str, negate: bool, at: int) -> Test:
    wanted = _scalar(selector, value, at)
    return lambda item: (wanted in selector.values(item)) != negate


def _empty(selector: _Selector, negate: bool, at: int) -> Test:
    if selector.shape.kind not in ("list", "map", "str", "null"):
        raise FilterError(f"is empty needs a list, map or string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    return lambda item: all(not v for v in selector.values(item)) != negate


def _contains(selector: _Selector, value: str, negate: bool, at: int) -> Test:
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


class _Pattern:
    """A `matches` operand: checked while parsing, compiled after (see compile_filter_paced)."""

    def __init__(self, pattern: str, at: int) -> None:
        self.pattern, self.at = pattern, at
        self._regex: LinearRegex | None = None

    def compile(self) -> None:
        try:
            self._regex = LinearRegex(self.pattern)
        except PatternError as exc:
            raise FilterError(f"matches: {exc} (position {self.at})") from None

    def search(self, text: str) -> bool:
        if self._regex is None:
            self.compile()
        assert self._regex is not None
        return self._regex.search(text)


def _matches(selector: _Selector, value: str, negate: bool, at: int,
             patterns: list[_Pattern]) -> Test:
    if selector.shape.kind != "str":
        raise FilterError(f"matches needs a string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    pattern = _Pattern(value, at)
    patterns.append(pattern)
    return lambda item: any(
        isinstance(v, str) and pattern.search(v) for v in selector.values(item)
    ) != negate


def _check_length(text: str) -> None:
    if len(text) > MAX_FILTER:
        raise FilterError(f"filter is longer than {MAX_FILTER} characters")


def _parse(tokens: list[_Token], text: str, example: Item) -> tuple[Filter, list[_Pattern]]:
    parser = _Parser(tokens, Shape.of(example))
    return Filter(parser.parse(), text), parser.patterns


def compile_filter(text: str, example: Item) -> Filter:
    """The filter over an endpoint's JSON items; `example` is one item of that endpoint."""
    _check_length(text)
    if not text.strip():
        return Filter(None, text)
    compiled, patterns = _parse(list(_scan(text)), text, example)
    for pattern in patterns:
        pattern.compile()
    return compiled


async def compile_filter_paced(text: str, example: Item) -> Filter:
    """compile_filter, letting the loop run while it scans and between patterns (each takes
    up to ~1 ms to compile); parsing the longest filter takes another ~2 ms."""
    _check_length(text)
    if not text.strip():
        return Filter(None, text)
    compiled, patterns = _parse(await _scan_paced(text), text, example)
    pacer = Pacer()
    for pattern in patterns:
        await pacer.step()
        pattern.compile()
    return compiled
