"""Every flag of every `pilotfish` command is documented (docs/ or SECURITY.md), and every
`--flag` the pages give `pilotfish` exists: in command lines that run pilotfish, and in code
spans of prose and tables, less the flags of other tools named in OTHER_TOOLS."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pilotfish.cli import build_parser
from tests.docs.pages import DOCS, REPO, Page, pages

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w-])")
# A command line that runs pilotfish: the console script, python -m, ./scripts/up (whose
# arguments go to `pilotfish up`), or the image (whose entry point is pilotfish).
_RUNS_PILOTFISH = re.compile(
    r"^\s*(\$ )?([\w=.\-/]+=\S+ )*(\S*/)?(pilotfish|python3? -m pilotfish|\./scripts/up) ")
# Flags of other tools that the pages write in prose (`--flag` in a code span), by tool.
OTHER_TOOLS = {
    "docker / dockerd": {"--network", "--bridge", "--iptables", "--ip6tables", "--scale",
                         "--volumes", "--health-cmd", "--expose", "--default-address-pool",
                         "--force-recreate", "--no-deps", "--data-root", "--exec-root"},
    "pip": {"--no-index", "--find-links"},
    "debootstrap": {"--variant", "--include"},
    "prometheus": {"--config-file"},
    "etcd": {"--auth-token-ttl", "--client-cert-auth", "--pre-vote"},
    "benchmarks (python -m bench.*)": {"--engine", "--services"},
}
ALLOWED = set().union(*OTHER_TOOLS.values())


def _long_flags(parser: argparse.ArgumentParser) -> set[str]:
    """A parser's long flags (without --help), and those of its own subcommands
    (`pilotfish ca init --dir` counts as a flag of `ca`)."""
    flags: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _long_flags(sub)
        flags |= {flag for flag in action.option_strings
                  if flag.startswith("--") and flag != "--help"}
    return flags


def commands() -> dict[str, set[str]]:
    """Every subcommand's long flags (without --help)."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: _long_flags(sub) for name, sub in subparsers.choices.items()}


def documented(flag: str, text: str) -> bool:
    """Whether the text names the flag (as itself, not as the start of a longer one)."""
    return any(match[0] == flag for match in _FLAG.finditer(text))


def test_every_flag_is_documented() -> None:
    text = "\n".join(p.read_text() for p in [*DOCS.glob("*.md"), REPO / "SECURITY.md"])
    missing = sorted(f"{name} {flag}" for name, flags in commands().items()
                     for flag in flags if not documented(flag, text))
    assert missing == []


def subcommand(line: str) -> str | None:
    """The pilotfish command a command line runs (`up` for ./scripts/up), if it names one."""
    if "./scripts/up" in line:
        return "up"
    words = line.split()
    at = next((i for i, word in enumerate(words) if word.endswith("pilotfish")), None)
    if at is None or at + 1 >= len(words):
        return None
    return words[at + 1] if words[at + 1] in commands() else None


def flags_said(page: Page) -> list[tuple[int, str, str | None]]:
    """(line, flag, the command it is given to where the line says) of every flag the page
    gives pilotfish."""
    said: list[tuple[int, str, str | None]] = []
    command: str | None = None
    continued = False
    for line in page.lines:
        if line.in_code:
            runs = continued or bool(_RUNS_PILOTFISH.match(line.text))
            if runs:
                command = command if continued else subcommand(line.text)
                code = line.text.split(" #", 1)[0]
                said += [(line.number, match[0], command) for match in _FLAG.finditer(code)]
            continued = runs and line.text.rstrip().endswith("\\")
        else:
            continued = False
    for number, span in page.code_spans():
        if span.startswith("--") or _RUNS_PILOTFISH.match(span + " "):
            said += [(number, match[0], subcommand(span)) for match in _FLAG.finditer(span)]
    return said


def test_every_flag_said_exists() -> None:
    flags = commands()
    known = set().union(*flags.values())
    stale = [f"{path.relative_to(REPO)}:{number}: {command or 'pilotfish'} {flag}"
             for path in pages() for number, flag, command in flags_said(Page(path))
             if flag not in ALLOWED and flag not in (flags[command] if command else known)]
    assert stale == []


def test_the_checker_sees_a_stale_flag(tmp_path: Path) -> None:
    """A flag pilotfish lacks is found in a command line and in a table, not after curl."""
    page = tmp_path / "p.md"
    page.write_text("| `--no-such-flag N` | x |\n\n    pilotfish up --route a=b \\\n"
                    "        --gone 1\n    curl --silent x\n")
    said = {(flag, command) for _, flag, command in flags_said(Page(page))}
    assert said == {("--no-such-flag", None), ("--route", "up"), ("--gone", "up")}
