"""The project's Markdown pages as the docs tests read them: links, headings, code and prose."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def pages() -> list[Path]:
    """Every page whose links the project keeps working: README, SECURITY and docs/."""
    return [REPO / "README.md", REPO / "SECURITY.md", *sorted(DOCS.glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: no markup, lower case, punctuation dropped, spaces -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@dataclass(frozen=True)
class Line:
    """One line of a page, and whether it sits in a code block (fenced or indented)."""

    number: int
    text: str
    in_code: bool


@dataclass
class Page:
    """One Markdown file, split into code and prose lines."""

    path: Path

    @cached_property
    def lines(self) -> list[Line]:
        """Every line, with code blocks marked (fences and 4-space indents after a blank)."""
        found: list[Line] = []
        fenced, indented, previous_blank = False, False, True
        for number, text in enumerate(self.path.read_text().splitlines(), start=1):
            if _FENCE.match(text):
                found.append(Line(number, text, True))
                fenced = not fenced
                continue
            if not fenced:
                if text.startswith("    ") and (previous_blank or indented) and \
                        not re.match(r"\s*([-*] |\d+\. |\|)", text):
                    indented = True
                elif text.strip():
                    indented = False
            found.append(Line(number, text, fenced or (indented and bool(text.strip()))))
            previous_blank = not text.strip()
        return found

    @cached_property
    def anchors(self) -> set[str]:
        """The anchors of the page's headings (GitHub's, -1, -2 for repeats)."""
        seen: dict[str, int] = {}
        anchors = set()
        for line in self.lines:
            if not line.in_code and (match := re.match(r"#{1,6} (.+)", line.text)):
                base = slug(match[1])
                count = seen.get(base, 0)
                anchors.add(base if count == 0 else f"{base}-{count}")
                seen[base] = count + 1
        return anchors

    def links(self) -> list[tuple[int, str]]:
        """(line, target) of every Markdown link outside code."""
        found = []
        for line in self.lines:
            if line.in_code:
                continue
            text = _CODE_SPAN.sub("", line.text)
            found += [(line.number, match[1]) for match in _LINK.finditer(text)]
        return found

    def code_spans(self) -> list[tuple[int, str]]:
        """(line, content) of every `code span` in prose and tables."""
        return [(line.number, match[2].strip()) for line in self.lines if not line.in_code
                for match in _CODE_SPAN.finditer(line.text)]
