"""Every relative link and anchor in README.md, SECURITY.md and docs/ resolves; every page
under docs/ is reachable from the front page and from the index; the README stays a front page."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.docs.pages import DOCS, REPO, Page, pages

EXTERNAL = ("http://", "https://", "mailto:")
FRONT_PAGE_LINES = 250


def broken_links(page: Page) -> list[str]:
    """What is wrong with each of the page's relative links (path missing, anchor missing)."""
    broken = []
    for number, target in page.links():
        if target.startswith(EXTERNAL):
            continue
        where, _, anchor = target.partition("#")
        path = (page.path.parent / unquote(where)).resolve() if where else page.path
        name = f"{page.path.relative_to(REPO)}:{number}: {target}"
        if not path.exists():
            broken.append(f"{name}: no such file")
        elif not path.is_relative_to(REPO):
            broken.append(f"{name}: outside the repository")
        elif anchor and path.suffix != ".md":
            broken.append(f"{name}: an anchor into a file that is not a page")
        elif anchor and anchor not in Page(path).anchors:
            broken.append(f"{name}: no heading with this anchor in {path.name}")
    return broken


@pytest.mark.parametrize("path", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path: Path) -> None:
    assert broken_links(Page(path)) == []


def linked_pages(page: Page) -> set[Path]:
    """The pages a page links to."""
    return {(page.path.parent / t.partition("#")[0]).resolve() for _, t in page.links()
            if not t.startswith(EXTERNAL) and t.partition("#")[0].endswith(".md")}


@pytest.mark.parametrize("index", [REPO / "README.md", DOCS / "README.md"],
                         ids=["README.md", "docs/README.md"])
def test_every_docs_page_is_linked(index: Path) -> None:
    wanted = {p.resolve() for p in DOCS.glob("*.md")} | {(REPO / "SECURITY.md").resolve()}
    wanted.discard(index.resolve())
    assert sorted(str(p.relative_to(REPO)) for p in wanted - linked_pages(Page(index))) == []


def test_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= FRONT_PAGE_LINES, f"README.md has {len(lines)} lines"


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    """The checks can fail: a missing file and a missing anchor are both reported."""
    (tmp_path / "a.md").write_text("# Title\n\n[x](b.md) [y](#nothing) [z](#title)\n\n"
                                   "    [in code](nowhere.md)\n")
    page = Page(tmp_path / "a.md")
    assert [t for _, t in page.links()] == ["b.md", "#nothing", "#title"]
    assert "title" in page.anchors and "nothing" not in page.anchors


@pytest.mark.parametrize(("heading", "anchor"), [
    ("REST API (`/v1`)", "rest-api-v1"),
    ("A 5-minute tour with Docker", "a-5-minute-tour-with-docker"),
    ("Settings: `compose/.env`", "settings-composeenv"),
    ("Freshness and fail-static, exactly", "freshness-and-fail-static-exactly"),
])
def test_anchors_as_github_makes_them(heading: str, anchor: str) -> None:
    from tests.docs.pages import slug
    assert slug(heading) == anchor
