"""Shell completion scripts for bash, zsh and fish, written into ``completions/``.

The scripts are thin: at completion time they call ``ecgbench`` back (Typer/click protocol), so the
groups and commands they offer always match the installed CLI. Regenerate with
``python -m ecgbench.completion completions/`` (the ``completions`` nox session does this).
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer._completion_shared import get_completion_script

PROG = "ecgbench"
COMPLETE_VAR = "_ECGBENCH_COMPLETE"
SCRIPT_NAMES = {"bash": "ecgbench.bash", "zsh": "_ecgbench", "fish": "ecgbench.fish"}


def completion_script(shell: str) -> str:
    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def write_completion_scripts(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for shell, name in SCRIPT_NAMES.items():
        path = directory / name
        path.write_text(completion_script(shell), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_completion_scripts(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(path)
