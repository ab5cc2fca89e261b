"""The README as a test: every shell line of its usage sections runs, literally, in order.

The lines of each section's ``bash`` blocks run in one bash session in a fresh checkout
(variables set by one line are there for the next, as in a person's shell); a command
the README runs in the foreground of its own shell (`canary up`, `canary api`) is
started in the background and waited for. A line that exits non-zero fails the test
and names the line, so the README cannot drift from what works.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.journeys.conftest import PROJECT_ROOT, Checkout, make_checkout

pytestmark = pytest.mark.integration

README = PROJECT_ROOT / "README.md"
# the sections a new user follows, in this order; the rest document settings and tests
USAGE_SECTIONS = ("Using it", "Batches", "HTTP API")
# commands that stay in the foreground of their shell, with how to know they are ready
SERVICES = {
    "canary up": "__wait_for_stack",
    "canary api": "__wait_for_api",
}
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class ReadmeLine:
    section: str
    number: int  # line number in README.md
    command: str


def sections(text: str) -> dict[str, list[tuple[int, str]]]:
    """Level-2 section title -> its (README line number, line) pairs."""
    found: dict[str, list[tuple[int, str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            current = line[3:].strip()
            found[current] = []
        elif current is not None:
            found[current].append((number, line))
    return found


def shell_lines(text: str, wanted: tuple[str, ...]) -> list[ReadmeLine]:
    """The commands of the ``bash`` blocks of the wanted sections (continuations joined)."""
    found = sections(text)
    missing = [name for name in wanted if name not in found]
    assert not missing, f"README sections not found: {missing}"
    commands: list[ReadmeLine] = []
    for name in wanted:
        in_bash, pending, first = False, "", 0
        for number, line in found[name]:
            fence = FENCE.match(line)
            if fence:
                in_bash = not in_bash and fence.group(1) == "bash"
                continue
            if not in_bash or not line.strip():
                continue
            first = first or number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            commands.append(ReadmeLine(name, first, (pending + line).strip()))
            pending, first = "", 0
    return commands


def service_of(command: str) -> str | None:
    words = shlex.split(command, comments=True)
    for prefix, ready in SERVICES.items():
        if words[: len(prefix.split())] == prefix.split():
            return ready
    return None


PRELUDE = r"""
set -eo pipefail
trap 'echo "README line failed (exit $?): $BASH_COMMAND" >&2' ERR
__wait_for_stack() {
  PYTHONPATH="$__PROJECT" python -m tests.journeys.ready stack
}
__wait_for_api() {
  PYTHONPATH="$__PROJECT" python -m tests.journeys.ready api
}
"""


def script_for(lines: list[ReadmeLine]) -> str:
    parts = [PRELUDE]
    for index, line in enumerate(lines):
        parts.append(f"echo {shlex.quote(f'$ {line.command}  (README.md:{line.number})')}")
        ready = service_of(line.command)
        if ready:  # the line without its comment, in the background
            command = shlex.join(shlex.split(line.command, comments=True))
            parts.append(f"{command} > service-{index}.out 2>&1 &")
            parts.append(ready)
        else:
            parts.append(line.command)
    return "\n".join(parts) + "\n"


def test_the_extractor_reads_the_readme_as_written() -> None:
    lines = shell_lines(README.read_text(), USAGE_SECTIONS)
    commands = [line.command for line in lines]
    assert commands[0] == ". .venv/bin/activate"
    assert any(service_of(c) == "__wait_for_stack" for c in commands)
    assert any(c.startswith("curl ") and "Content-Type: application/json" in c for c in commands)
    assert not any(c.endswith("\\") for c in commands)


@pytest.mark.timeout(900)
def test_every_usage_line_of_the_readme_works(checkout: Checkout) -> None:
    lines = shell_lines(README.read_text(), USAGE_SECTIONS)
    script = script_for(lines)
    (checkout.root / "readme.sh").write_text(script)
    checkout.env["__PROJECT"] = str(PROJECT_ROOT)
    process = checkout.start("bash readme.sh", "readme")
    try:
        code = process.wait(timeout=900)
    finally:
        checkout.stop_background()
    output = (checkout.root / "readme.out").read_text(errors="replace")
    assert code == 0, f"{output[-6000:]}\n{checkout.logs()}"
    assert "README line failed" not in output
    assert Path(checkout.root / "out.png").stat().st_size > 0  # the curl line's image


@pytest.mark.timeout(900)
def test_after_the_demo_the_readmes_next_commands_work(tmp_path: Path) -> None:
    """`make demo` is setup (already done here) and `canary demo`; the README's lines after
    it must work on the demo's experiment."""
    checkout = make_checkout(tmp_path)
    demo = checkout.run(".venv/bin/canary demo --jobs 6", timeout=600)
    assert "canary rollout status demo-canary" in demo.stdout
    lines = [
        line
        for line in shell_lines(README.read_text(), ("The two commands",))
        if not line.command.startswith("make ")
    ]
    assert any("rollout status demo-canary" in line.command for line in lines)
    result = checkout.run(script_for(lines))
    assert "demo-canary" in result.stdout and "50%" in result.stdout
