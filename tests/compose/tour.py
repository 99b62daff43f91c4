"""The README's Docker tour as the test runs it: its commands read from README.md, run in bash.

`tour_steps()` reads the numbered steps under "A 5-minute tour with Docker" and the commands
of their ```sh blocks. `TourShell` runs those commands one at a time the way a user's terminal
would: the working folder and exported variables carry from one command to the next. It points
them at the test's engine, project and ports through the environment only (DOCKER_HOST,
COMPOSE_PROJECT_NAME, PF_*; compose reads them before compose/.env), and changes one thing in
the text: the well-known ports (8500, 8600, 8080, 8700) become the free ports the test picked.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.docker import DockerEngine

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TOUR_HEADING = "## A 5-minute tour with Docker"
WELL_KNOWN = {"API": 8500, "DNS": 8600, "LB": 8080, "LB_API": 8700}
_STEP = re.compile(r"^(\d+)\. ")
_PORT_IN_TEXT = re.compile(r"(127\.0\.0\.1:|-p )(\d+)\b")


@dataclass(frozen=True)
class Step:
    """One numbered step of the tour and the commands its code blocks hold, in order."""

    number: int
    commands: tuple[str, ...]


def tour_steps(readme: Path = README) -> dict[int, Step]:
    """The tour's steps by number, read from the README (fails if the section is missing)."""
    lines = readme.read_text().splitlines()
    start = lines.index(TOUR_HEADING) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    steps: dict[int, list[str]] = {}
    number, in_block = 0, False
    for line in lines[start:end]:
        text = line.strip()
        if not in_block and (match := _STEP.match(line)):
            number = int(match[1])
            steps[number] = []
        elif text.startswith("```"):
            in_block = text == "```sh" if not in_block else False
        elif in_block and text and not text.startswith("#"):
            assert number, f"a command before the tour's first step: {text}"
            commands = steps[number]
            if commands and commands[-1].endswith("\\"):
                commands[-1] = commands[-1][:-1] + " " + text
            else:
                commands.append(text)
    assert steps, f"no steps under {TOUR_HEADING!r} in {readme}"
    return {n: Step(n, tuple(c)) for n, c in steps.items()}


class TourShell:
    """bash running the tour's commands one by one, on the test's engine, project and ports."""

    def __init__(self, engine: DockerEngine, project: str, ports: dict[str, int]) -> None:
        self.ports = ports
        self.env = {**engine.env, "COMPOSE_PROJECT_NAME": project,
                    "PF_DOCKER_SOCKET": str(engine.socket),
                    **{f"PF_{name}_PORT": str(port) for name, port in ports.items()}}
        self._state = Path(tempfile.mkdtemp(prefix="pf-tour-"))
        (self._state / "cwd").write_text(str(REPO))
        (self._state / "env").write_text("")
        self._ports = {WELL_KNOWN[name]: port for name, port in ports.items()
                       if name in WELL_KNOWN}

    def local(self, command: str) -> str:
        """The command with the well-known ports replaced by the test's."""
        def swap(match: re.Match[str]) -> str:
            port = int(match[2])
            return f"{match[1]}{self._ports.get(port, port)}"
        local = _PORT_IN_TEXT.sub(swap, command)
        left = [str(port) for port in self._ports if re.search(rf"\b{port}\b", local)]
        assert not left, f"port {left} in a form the test does not rewrite: {command}"
        return local

    def _script(self, command: str) -> list[str]:
        state = shlex.quote(str(self._state))
        script = (f"cd \"$(cat {state}/cwd)\" && . {state}/env\n{self.local(command)}\n"
                  f"status=$?; pwd > {state}/cwd; export -p > {state}/env; exit $status\n")
        return ["bash", "-c", script]

    @property
    def cwd(self) -> Path:
        """The folder the last command left the shell in."""
        return Path((self._state / "cwd").read_text().strip())

    def run(self, command: str, timeout: float = 900.0) -> str:
        """Run one tour command; its output, or fail with it."""
        result = subprocess.run(self._script(command), capture_output=True, text=True,
                                env=self.env, timeout=timeout)
        assert result.returncode == 0, \
            f"tour command failed ({result.returncode}): {command}\n" \
            f"{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, command: str) -> subprocess.Popen[str]:
        """Start one tour command in the background (stdout piped, stderr with it)."""
        return subprocess.Popen(self._script(command), env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finish(self, process: subprocess.Popen[str], command: str, timeout: float) -> str:
        """Wait for a command started with `start`; its output, or fail with it."""
        output = process.communicate(timeout=timeout)[0]
        assert process.returncode == 0, f"tour command failed: {command}\n{output}"
        return output
