"""The guides in docs/ run here, so their commands and outputs cannot rot.

Convention (docs/README.md says it for writers):

- A fenced block with the info string ``console`` is a session: a line ``$ COMMAND`` is a command (a line
  ending in `` \\`` continues on the next), the lines after it until the next ``$`` are what it prints.
- The shown output must match the real output line by line, whole (trailing spaces and blank lines
  aside). A line that is exactly ``...`` stands for any number of lines; ``...`` inside a line stands for
  any text (timings, losses, paths). Nothing else is normalised.
- A command must exit with 0, unless its output ends with a line ``[exit code N]``.
- A block whose info string holds ``file=NAME`` (```` ```toml file=grid.toml ````) is a file the later
  commands read: it is written to NAME first.
- Every guide runs in one working directory, in the order of ``ORDER``, so a guide may use what an earlier
  one made (data.md prepares the store the others read).

``ecgbench ...`` commands run in this process through the real Typer app (``ecgbench.cli.app``; one start
of torch for all of them), at a fixed width of 100 columns; any other command (``accelerate launch``,
``python -c``) runs in bash with this virtual environment's bin folder first on PATH.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
ORDER = [
    "data.md", "tokenizer.md", "encoder.md", "train.md", "infer.md", "judge.md", "demo.md", "run.md",
    "scaling.md", "extending.md",
]  # fmt: skip
WIDTH = "100"
ELLIPSIS = "..."
_EXIT = re.compile(r"^\[exit code (\d+)\]$")
_FENCE = re.compile(r"^```(.*)$")


# ------------------------------------------------------------------------------- reading the guides


@dataclass
class Command:
    line: int  # where the command is in its guide (1-based)
    command: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0


@dataclass
class File:
    line: int
    name: str
    text: str


def parse(markdown: str) -> list[Command | File]:
    """The commands and files of one guide, in order."""
    steps: list[Command | File] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        info, start = fence.group(1).split(), i + 1
        i = start
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if i == len(lines):
            raise ValueError(f"line {start}: a fenced block is not closed")
        body = lines[start:i]
        i += 1
        names = [word.removeprefix("file=") for word in info if word.startswith("file=")]
        if names:
            steps.append(File(start, names[0], "\n".join(body) + "\n"))
        elif info[:1] == ["console"]:
            steps.extend(_session(body, start + 1))
    return steps


def _session(body: list[str], first_line: int) -> list[Command]:
    commands: list[Command] = []
    j = 0
    while j < len(body):
        text = body[j]
        if not text.startswith("$ "):
            if commands:
                commands[-1].expected.append(text)
            elif text.strip():
                raise ValueError(f"line {first_line + j}: output before any `$ ` command")
            j += 1
            continue
        line, command = first_line + j, text[2:]
        while command.endswith("\\") and j + 1 < len(body):
            j += 1
            command = command[:-1].rstrip() + " " + body[j].strip()
        commands.append(Command(line, command))
        j += 1
    for c in commands:
        shown = [t for t in c.expected if t.strip()]
        if shown and (code := _EXIT.match(shown[-1].strip())):
            c.exit_code = int(code.group(1))
            c.expected.remove(shown[-1])
    return commands


# ------------------------------------------------------------------------------------- the matcher


def _lines(text: str) -> list[str]:
    return [t.rstrip() for t in text.splitlines() if t.strip()]


def _line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in expected.split(ELLIPSIS)) + r"\Z")


def matches(expected: list[str], actual: str) -> bool:
    """Whether ``actual`` (the whole output) is what ``expected`` (the doc's lines) shows."""
    want, have = _lines("\n".join(expected)), _lines(actual)
    # reach[j]: the first i expected lines can produce exactly the first j output lines
    reach = [True] + [False] * len(have)
    for line in want:
        if line.strip() == ELLIPSIS:
            for j in range(1, len(have) + 1):
                reach[j] = reach[j] or reach[j - 1]
            continue
        pattern = _line_pattern(line)
        reach = [False] + [reach[j - 1] and bool(pattern.match(have[j - 1])) for j in range(1, len(have) + 1)]
    return reach[-1]


# ------------------------------------------------------------------------------------------ running


@dataclass
class Ran:
    command: Command
    output: str
    exit_code: int


def _run(command: str, cwd: Path) -> tuple[str, int]:
    from typer.testing import CliRunner

    from ecgbench.cli import app

    words = shlex.split(command)
    if words[0] == "ecgbench":
        result = CliRunner().invoke(app, words[1:])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a crash is a bug to see, not an output to compare
        return result.output, result.exit_code
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        command, shell=True, executable="/bin/bash", cwd=cwd, env=env, text=True, timeout=600,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # interleaved, as a terminal shows them
    )  # fmt: skip
    return done.stdout, done.returncode


def _check(doc: str, ran: Ran) -> str | None:
    """What is wrong with one command of a guide, or None."""
    c = ran.command
    where = f"docs/{doc}:{c.line}: $ {c.command}"
    if ran.exit_code != c.exit_code:
        return f"{where}\nexit code {ran.exit_code}, not {c.exit_code}:\n{ran.output}"
    if not matches(c.expected, ran.output):
        return f"{where}\n--- the guide shows:\n" + "\n".join(c.expected) + f"\n--- it printed:\n{ran.output}"
    return None


def test_every_guide_is_run() -> None:
    assert sorted(ORDER) == sorted(p.name for p in DOCS_DIR.glob("*.md") if p.name != "README.md")


@pytest.mark.slow
def test_every_guide_prints_what_it_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One test, not one per guide: the guides build on each other, and under pytest-xdist separate tests
    # could land on separate workers, each running every guide before its own.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", WIDTH)
    # ecgbench's two consoles are made once per process, and an earlier test in the same pytest-xdist worker
    # can leave them at another width (CI showed 80 columns); pin their size for the guides' outputs
    from ecgbench import console as consoles

    for shared in (consoles.console, consoles.stdout):
        monkeypatch.setattr(shared, "_width", int(WIDTH))
        monkeypatch.setattr(shared, "_height", 25)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    problems: list[str] = []
    started = time.perf_counter()
    count = 0
    for doc in ORDER:
        steps = parse((DOCS_DIR / doc).read_text(encoding="utf-8"))
        if not any(isinstance(step, Command) for step in steps):
            problems.append(f"docs/{doc} runs no command")
        for step in steps:
            if isinstance(step, File):
                (tmp_path / step.name).write_text(step.text, encoding="utf-8")
                continue
            output, code = _run(step.command, tmp_path)
            count += 1
            problem = _check(doc, Ran(step, output, code))
            if problem:
                problems.append(problem)
    print(f"\ndocs: {count} commands in {time.perf_counter() - started:.0f} s")
    assert not problems, "\n\n".join(problems)


# ------------------------------------------------------------- the reader and matcher themselves

GUIDE = """# A guide

Some text; a bash block is not run:

```bash
ecgbench data prepare ptbxl --root /data/ptbxl --out store
```

```toml file=grid.toml
[vars]
out = "runs"
```

```console
$ ecgbench data verify store
store: ok (68 segments in 1 shards, checksums match)
$ ecgbench run grid.toml \\
    --dry-run
...
2 to run, 0 cached
$ ecgbench data verify nowhere
error: ...
[exit code 2]
```
"""


def test_the_reader_finds_files_commands_outputs_and_exit_codes() -> None:
    steps = parse(GUIDE)
    assert [type(s).__name__ for s in steps] == ["File", "Command", "Command", "Command"]
    file, verify, run, bad = steps
    assert isinstance(file, File) and file.name == "grid.toml" and file.text == '[vars]\nout = "runs"\n'
    assert isinstance(verify, Command) and verify.command == "ecgbench data verify store"
    assert verify.expected == ["store: ok (68 segments in 1 shards, checksums match)"]
    assert verify.exit_code == 0
    assert isinstance(run, Command) and run.command == "ecgbench run grid.toml --dry-run"
    assert run.expected == ["...", "2 to run, 0 cached"]
    assert isinstance(bad, Command) and bad.expected == ["error: ..."] and bad.exit_code == 2


def test_output_before_a_command_and_an_open_block_are_refused() -> None:
    with pytest.raises(ValueError, match="output before"):
        parse("```console\nstray\n$ ecgbench --version\n```\n")
    with pytest.raises(ValueError, match="not closed"):
        parse("```console\n$ ecgbench --version\n")


def test_the_matcher_is_strict_but_for_the_ellipses() -> None:
    printed = "wrote sets/labels.parquet\n\n  table title   \nrows: 27\ntime 0.8 s\n"
    assert matches(["wrote sets/labels.parquet", "  table title", "rows: 27", "time ... s"], printed)
    assert matches(["wrote sets/labels.parquet", "...", "time ... s"], printed)
    assert matches(["...", "rows: 27", "..."], printed)
    assert not matches(["wrote sets/labels.parquet", "  table title", "rows: 28", "time ... s"], printed)
    # leading spaces count
    assert not matches(["wrote sets/labels.parquet", "table title", "rows: 27", "time ... s"], printed)
    assert not matches(["wrote sets/labels.parquet", "rows: 27", "time ... s"], printed)  # a line left out
    assert not matches(["wrote sets/labels.parquet", "..."], "")  # nothing printed
    assert not matches([], printed)  # output the guide does not show
    assert matches([], "\n\n")
    assert not matches(["rows: 2..."], "rows: 27 of 28\nmore")  # `...` inside a line stays in the line


def test_a_changed_output_or_exit_code_is_reported(tmp_path: Path) -> None:
    guide = "```console\n$ ecgbench --version\necgbench ...\n$ echo hello >&2\nhello\n```\n"
    version, echo = parse(guide)
    assert isinstance(version, Command) and isinstance(echo, Command)
    assert _check("x.md", Ran(version, *_run(version.command, tmp_path))) is None
    assert _check("x.md", Ran(echo, *_run(echo.command, tmp_path))) is None  # stderr is output too
    version.expected = ["ecgbench 0.0.0-not-this-one"]
    assert "the guide shows" in (_check("x.md", Ran(version, *_run(version.command, tmp_path))) or "")
    version.expected, version.exit_code = ["ecgbench ..."], 2
    assert "exit code 0, not 2" in (_check("x.md", Ran(version, *_run(version.command, tmp_path))) or "")
