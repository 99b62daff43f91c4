"""The few HTML helpers the pages are written with: escaping, bounded text, tables, times."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence

MAX_TEXT = 300  # characters of any one value shown (meta values, check output, log lines)


def esc(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as HTML text, cut to `limit` characters: every value shown goes through here."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=True)


def table(headers: Sequence[str], rows: Iterable[str], css: str = "",
          empty: str = "nothing here") -> str:
    """A table with a header row; `rows` are ready `<tr>` strings."""
    body = "".join(rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def badge(state: str, text: str | None = None) -> str:
    """A coloured state word (passing, warning, critical, healthy, down, ...)."""
    return f'<span class="badge {esc(state, 32)}">{esc(text or state)}</span>'


def ago(seconds: float | None) -> str:
    """A duration as people read it: 4 s, 3 min, 2 h."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def clock(epoch: float | None) -> str:
    """A wall-clock time as a <time> element (the page shows it in the reader's zone)."""
    if epoch is None:
        return "—"
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return f'<time datetime="{utc}">{time.strftime("%H:%M:%S", time.gmtime(epoch))} UTC</time>'


def size(count: float) -> str:
    """A byte count: 512 B, 3.4 KiB, 12 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def count(number: int, noun: str) -> str:
    """"1 instance", "3 instances"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def needs_token(what: str) -> str:
    """What a reader without the read scope sees in place of catalog data."""
    return (f'<p class="locked">A token with scope <code>read</code> is needed to see {esc(what)}. '
            'Give one under <b>Token</b> above: it stays in this tab only.</p>')
