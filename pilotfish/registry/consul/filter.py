"""Consul's `?filter=` expressions (the go-bexpr language), for the selectors pilotfish can answer.

Supported: `==`, `!=`, `contains`, `not contains`, `in`, `not in`, `is empty`, `is not empty`,
`matches`, `not matches`, joined with `and`, `or`, `not` and parentheses; selectors with `.` or
`["key"]` (`Service.Meta.env`, `ServiceMeta["a.b"]`); values quoted with "" or backticks, numbers,
or bare words. Selectors are checked against the endpoint's JSON shape, so a misspelt one is a 400
even when the answer is empty. Through a list of objects (`Checks.Status`) a positive match needs
one element to match, and its negation none. Anything else is a `FilterError` (a 400 naming the
position), never a silently empty answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Item = Mapping[str, Any]
Predicate = Callable[[Item], bool]

MAP_FIELDS = frozenset({"Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses",
                        "ServiceTaggedAddresses"})
"""Fields whose keys are user data (any key may be selected), not a fixed structure."""

MAX_FILTER = 4096
MAX_DEPTH = 64
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


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise FilterError(f"unexpected character {text[at]!r} at position {at}")
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            tokens.append(_Token("keyword" if kind == "word" and word in _KEYWORDS else kind,
                                 word, at))
        at = match.end()
    tokens.append(_Token("end", "", len(text)))
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


class _Parser:
    def __init__(self, text: str, root: Shape) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.root = root
        self.depth = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

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

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        if self.peek().kind != "end":
            token = self.peek()
            raise FilterError(f"unexpected {token.text!r} at position {token.at}")
        return predicate

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while self.accept("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else (lambda item: any(p(item) for p in parts))

    def conjunction(self) -> Predicate:
        parts = [self.unary()]
        while self.accept("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda item: all(p(item) for p in parts))

    def unary(self) -> Predicate:
        if self.peek().text in ("not", "(") and self.peek().kind in ("keyword", "op"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"more than {MAX_DEPTH} nested 'not' or '(' at position "
                                  f"{self.peek().at}")
            try:
                if self.accept("not"):
                    negated = self.unary()
                    return lambda item: not negated(item)
                self.expect("(")
                inner = self.disjunction()
                self.expect(")")
                return inner
            finally:
                self.depth -= 1
        return self.match()

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

    def match(self) -> Predicate:
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
            return _matches(selector, self.value(), negate, at)
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


def _equals(selector: _Selector, value: str, negate: bool, at: int) -> Predicate:
    wanted = _scalar(selector, value, at)
    return lambda item: any(v == wanted for v in selector.values(item)) != negate


def _empty(selector: _Selector, negate: bool, at: int) -> Predicate:
    if selector.shape.kind not in ("list", "map", "str", "null"):
        raise FilterError(f"is empty needs a list, map or string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    return lambda item: all(not v for v in selector.values(item)) != negate


def _contains(selector: _Selector, value: str, negate: bool, at: int) -> Predicate:
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


_QUANTIFIERS = frozenset("*+?{")
_LOOKAROUND = re.compile(r"\(\?<?[=!]|\\[1-9]")


def _linear_pattern(pattern: str, at: int) -> None:
    """Refuse what could backtrack exponentially in Python's re (Consul's RE2 never does).

    Lookarounds and backreferences are not RE2 at all; a repeated group that itself repeats or
    alternates, like (a+)+ or (a|aa)*, is valid RE2 but could hang this process.
    """
    if _LOOKAROUND.search(pattern):
        raise FilterError(f"matches: lookarounds and backreferences are not supported "
                          f"(position {at})")
    risky: list[bool] = []  # per open group: whether it repeats or alternates inside
    closed_risky = False
    n = 0
    while n < len(pattern):
        char = pattern[n]
        if char == "\\":
            n += 2
            closed_risky = False
            continue
        if char == "[":  # a character class: skip to its end
            end = n + 1
            end += 1 if pattern[end:end + 1] in ("^", "]") else 0
            while end < len(pattern) and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            n, closed_risky = end + 1, False
            continue
        if char in _QUANTIFIERS:
            if closed_risky:
                raise FilterError(f"matches: a repeated group that repeats or alternates "
                                  f"inside, like (a+)+, is not supported (position {at})")
            if risky:
                risky[-1] = True
        elif char == "|" and risky:
            risky[-1] = True
        closed_risky = False
        if char == "(":
            risky.append(False)
            n += 1 if pattern[n + 1:n + 2] == "?" else 0  # (?:…), (?P<…>…): not a quantifier
        elif char == ")" and risky:
            closed_risky = risky.pop()
            if risky and closed_risky:
                risky[-1] = True
        n += 1


def _matches(selector: _Selector, value: str, negate: bool, at: int) -> Predicate:
    if selector.shape.kind != "str":
        raise FilterError(f"matches needs a string; {selector.name} is a "
                          f"{selector.shape.kind} (position {at})")
    _linear_pattern(value, at)
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise FilterError(f"bad regular expression {value!r} (position {at}): {exc}") from None
    return lambda item: any(
        isinstance(v, str) and pattern.search(v) is not None for v in selector.values(item)
    ) != negate


def compile_filter(text: str, example: Item) -> Predicate:
    """A predicate over an endpoint's JSON items; `example` is one item of that endpoint."""
    if len(text) > MAX_FILTER:
        raise FilterError(f"filter is longer than {MAX_FILTER} characters")
    if not text.strip():
        return lambda item: True
    return _Parser(text, Shape.of(example)).parse()
