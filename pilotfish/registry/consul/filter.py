"""Consul's `?filter=` expressions (the go-bexpr language), for the selectors pilotfish can answer.

Supported: `==`, `!=`, `contains`, `not contains`, `in`, `not in`, `is empty`, `is not empty`,
`matches`, `not matches`, joined with `and`, `or`, `not` and parentheses; selectors with `.` or
`["key"]` (`Service.Meta.env`, `ServiceMeta["a.b"]`); values quoted with "" or backticks, numbers,
or bare words. Selectors are checked against the endpoint's JSON shape, so a misspelt one is a 400
even when the answer is empty. Through a list of objects (`Checks.Status`) a positive match needs
one element to match, and its negation none. Anything else is a `FilterError` (a 400 naming the
position), never a silently empty answer.

`matches` is RE2 (pilotfish.registry.consul.regex), linear as Consul's. This module reads the
expression (tokens, then a parser); selectors.py resolves its selectors against the endpoint's
shape, and predicates.py holds the compiled tree and evaluates it (`Filter.select`: in slices
that leave the event loop free, within FILTER_BUDGET seconds of work per answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pilotfish.registry.consul.pacing import Pacer
from pilotfish.registry.consul.predicates import (
    FILTER_BUDGET,
    AllOf,
    AnyOf,
    Filter,
    Leaf,
    Negated,
    Node,
    Pattern,
    Test,
    contains,
    equals,
    is_empty,
    matches,
)
from pilotfish.registry.consul.selectors import FilterError, Item, Selector, Shape, resolve

__all__ = ["FILTER_BUDGET", "Filter", "FilterError", "Item", "compile_filter",
           "compile_filter_paced"]

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


class _Parser:
    def __init__(self, tokens: list[_Token], root: Shape) -> None:
        self.tokens = tokens
        self.pos = 0
        self.root = root
        self.depth = 0
        self.patterns: list[Pattern] = []

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

    def parse(self) -> Node:
        predicate = self.disjunction()
        if self.peek().kind != "end":
            token = self.peek()
            raise FilterError(f"unexpected {token.text!r} at position {token.at}")
        return predicate

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self.accept("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.unary()]
        while self.accept("and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def unary(self) -> Node:
        if self.peek().text in ("not", "(") and self.peek().kind in ("keyword", "op"):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise FilterError(f"more than {MAX_DEPTH} nested 'not' or '(' at position "
                                  f"{self.peek().at}")
            try:
                if self.accept("not"):
                    return Negated(self.unary())
                self.expect("(")
                inner = self.disjunction()
                self.expect(")")
                return inner
            finally:
                self.depth -= 1
        return Leaf(self.match())

    def selector(self) -> Selector:
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
                return resolve(path, self.root, start.at)

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
            return contains(self.selector(), value, negate, first.at)
        selector = self.selector()
        at = self.peek().at
        if self.accept("=="):
            return equals(selector, self.value(), False, at)
        if self.accept("!="):
            return equals(selector, self.value(), True, at)
        if self.accept("is"):
            negate = self.accept("not")
            self.expect("empty")
            return is_empty(selector, negate, at)
        negate = self.accept("not")
        if self.accept("contains"):
            return contains(selector, self.value(), negate, at)
        if self.accept("matches"):
            return matches(selector, self.value(), negate, at, self.patterns)
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


def _check_length(text: str) -> None:
    if len(text) > MAX_FILTER:
        raise FilterError(f"filter is longer than {MAX_FILTER} characters")


def _parse(tokens: list[_Token], text: str, example: Item) -> tuple[Filter, list[Pattern]]:
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
