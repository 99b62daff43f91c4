"""`matches` patterns as Consul evaluates them: RE2 (linear time), through the google-re2 binding.

Consul runs `matches` with Go's regexp, which is RE2: no backreferences, no lookarounds, and a
match costs time linear in the text. Python's `re` backtracks (`.*.*.*…#` took seconds on a
33-character id), so it is never used here: google-re2 wraps the C++ RE2 library itself and has
no fallback to `re`; what RE2 refuses is a 400 naming `filter` and RE2's reason.

Linear is not the same as cheap, so a pattern is also bounded before it meets any text:
at most MAX_NESTING nested groups (as the filter's own parentheses), repeat counts of at most
1000 (Go refuses larger ones; RE2 would read `a{4294967296}` as literal text), and at most
MAX_PROGRAM compiled RE2 instructions each way. Catalog values are short (at most 512
characters), so one search stays under about 2 ms even when RE2's DFA gives up on a pattern
built to defeat it and falls back to its NFA (measured in tests/hostile/test_filter_regex.py).
"""

from __future__ import annotations

import re

import re2

MAX_NESTING = 64
MAX_REPEAT = 1000
MAX_PROGRAM = 500
"""RE2 instructions: `^(web|api|db)-[0-9]+$` is about 30, `.{60}` about 480; Unicode classes
are big (`\\pL` alone is about 1,200): ASCII classes fit."""
MAX_MEMORY = 64 * 1024
"""RE2's own budget per pattern (program and DFA cache): a huge pattern fails in ~1 ms."""

_REPEAT = re.compile(r"\{([0-9]+)(?:,([0-9]*))?\}")


class PatternError(ValueError):
    """A pattern RE2 (or a bound above) refuses; the message says why."""


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr: unbounded
    options.never_capture = True  # only "does it match" is asked: no submatch engines
    options.max_mem = MAX_MEMORY
    return options


_OPTIONS = _options()


def _class_end(pattern: str, start: int) -> int:
    """The index just past the character class opening at `start` (RE2's rules)."""
    n = start + 1
    if pattern.startswith("^", n):
        n += 1
    if pattern.startswith("]", n):  # a leading ] is a literal
        n += 1
    while n < len(pattern) and pattern[n] != "]":
        if pattern[n] == "\\":
            n = _escape_end(pattern, n)
        elif pattern.startswith("[:", n) and (close := pattern.find(":]", n + 2)) >= 0:
            n = close + 2
        else:
            n += 1
    return n + 1


def _escape_end(pattern: str, start: int) -> int:
    """The index just past the escape at `start`: \\x, \\x{…}, \\p{…}, \\Q…\\E."""
    kind = pattern[start + 1:start + 2]
    if kind == "Q":
        close = pattern.find("\\E", start + 2)
        return len(pattern) if close < 0 else close + 2
    if kind in ("x", "p", "P") and pattern.startswith("{", start + 2):
        close = pattern.find("}", start + 3)
        return len(pattern) if close < 0 else close + 1
    return start + 2


def check_bounds(pattern: str) -> None:
    """Refuse nesting deeper than MAX_NESTING and repeat counts over MAX_REPEAT."""
    depth = 0
    n = 0
    while n < len(pattern):
        char = pattern[n]
        if char == "\\":
            n = _escape_end(pattern, n)
            continue
        if char == "[":
            n = _class_end(pattern, n)
            continue
        if char == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise PatternError(f"more than {MAX_NESTING} nested groups at offset {n}")
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == "{" and (repeat := _REPEAT.match(pattern, n)):
            for count in repeat.groups():
                # as Go: a count with a leading zero makes { a literal; big ones are errors
                if count and not (len(count) > 1 and count[0] == "0") and (
                        len(count) > 4 or int(count) > MAX_REPEAT):
                    raise PatternError(f"invalid repeat count {repeat.group()[:16]} at offset "
                                       f"{n}: at most {MAX_REPEAT}")
        n += 1


class LinearRegex:
    """One compiled `matches` pattern: RE2, linear in the text, with a bounded program."""

    def __init__(self, pattern: str) -> None:
        check_bounds(pattern)
        try:
            encoded = pattern.encode("utf-8")
        except UnicodeEncodeError:
            raise PatternError("the pattern is not valid UTF-8 (a lone surrogate)") from None
        try:
            self._regexp = re2.compile(encoded, _OPTIONS)
            size = max(self._regexp.programsize, self._regexp.reverseprogramsize)
        except re2.error as exc:
            raise PatternError(_reason(exc, pattern)) from None
        if size > MAX_PROGRAM:
            raise PatternError(f"the pattern compiles to {size} RE2 instructions, more than "
                               f"{MAX_PROGRAM}: make it smaller")
        self.pattern = pattern

    def search(self, text: str) -> bool:
        """Whether the pattern matches somewhere in `text` (Go's MatchString)."""
        return self._regexp.search(text.encode("utf-8", "surrogatepass")) is not None


_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_BACKREFERENCE = re.compile(r"\(\?P=|\\[1-9]")


def _reason(exc: re2.error, pattern: str) -> str:
    message = exc.args[0] if exc.args else ""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    text = text[:120]
    if text.startswith("pattern too large"):
        return "the pattern is too large for RE2's memory budget: make it smaller"
    if _LOOKAROUND.search(pattern):
        return f"RE2 has no lookarounds ({text})"
    if _BACKREFERENCE.search(pattern):
        return f"RE2 has no backreferences ({text})"
    return f"RE2 refuses it: {text}"
