"""The generated completion scripts, run in the real shells, complete groups and commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecgbench.completion import SCRIPT_NAMES, completion_script

REPO = Path(__file__).resolve().parents[1]
COMPLETIONS = REPO / "completions"


def _env() -> dict[str, str]:
    # The scripts call `ecgbench` back by name: put this interpreter's scripts first on PATH.
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO, check=True).stdout


@pytest.mark.parametrize("shell", sorted(SCRIPT_NAMES))
def test_committed_scripts_are_current(shell: str) -> None:
    committed = (COMPLETIONS / SCRIPT_NAMES[shell]).read_text(encoding="utf-8")
    assert committed == completion_script(shell), "run: python -m ecgbench.completion completions"


def _require(shell: str) -> None:
    assert shutil.which(shell), f"{shell} is not installed: `./dev setup` installs bash, zsh and fish"


def test_bash_completes_groups_and_commands() -> None:
    _require("bash")
    script = f"""
source {COMPLETIONS / SCRIPT_NAMES["bash"]}
show() {{ _ecgbench_completion ecgbench; printf '%s\\n' "${{COMPREPLY[@]}}"; }}
COMP_WORDS=(ecgbench con); COMP_CWORD=1; show
COMP_WORDS=(ecgbench config ""); COMP_CWORD=2; show
"""
    lines = _run(["bash", "-c", script]).split()
    assert lines == ["config", "show"]


def test_zsh_completes_groups_and_commands() -> None:
    _require("zsh")
    # Outside an interactive session, stand in for the completion system's builtins and print what
    # the script hands them.
    script = f"""
compdef() {{ : }}
_arguments() {{ print -r -- "$@" }}
source {COMPLETIONS / SCRIPT_NAMES["zsh"]}
words=(ecgbench con); CURRENT=2; _ecgbench_completion
words=(ecgbench config ""); CURRENT=3; _ecgbench_completion
"""
    out = _run(["zsh", "-f", "-c", script])
    assert '"config":' in out
    assert '"show":' in out


def test_fish_completes_groups_and_commands() -> None:
    _require("fish")
    script = f"""
source {COMPLETIONS / SCRIPT_NAMES["fish"]}
complete -C 'ecgbench con'
complete -C 'ecgbench config '
"""
    out = _run(["fish", "--no-config", "-c", script])
    names = [line.split("\t")[0] for line in out.splitlines()]
    assert "config" in names
    assert "show" in names
