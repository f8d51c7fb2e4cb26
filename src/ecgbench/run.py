"""``ecgbench run RECIPE.toml``: a whole experiment, stage after stage, resumable.

A recipe only strings together the same commands a person would type::

    [vars]
    out = "runs/quickstart"

    [[stages]]
    name = "prepare"
    command = ["data", "prepare", "sample", "--out", "{out}/store"]
    creates = ["{out}/store/manifest.json"]

``{name}`` is replaced by a value from ``[vars]`` (or ``--set name=value``); relative paths in a recipe
are used as written, from the current directory. A stage whose ``creates`` paths all exist is skipped,
so a run that stopped part way resumes at the first unfinished stage.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ecgbench.console import console
from ecgbench.errors import UserError
from ecgbench.files import read_toml

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Stage:
    name: str
    command: list[str]
    creates: list[str] = field(default_factory=list)

    def done(self) -> bool:
        return bool(self.creates) and all(Path(p).exists() for p in self.creates)


def _substitute(text: str, variables: dict[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise UserError(f"{where}: unknown variable {{{name}}} (define it under [vars] or with --set)")
        return variables[name]

    return _VAR.sub(value, text)


def load_recipe(path: Path, overrides: dict[str, str] | None = None) -> list[Stage]:
    raw = read_toml(path, "recipe")
    unknown = set(raw) - {"vars", "stages", "description"}
    if unknown:
        raise UserError(
            f"recipe {path}: unknown key(s) {sorted(unknown)} (allowed: description, vars, stages)"
        )
    table = raw.get("vars", {})
    if not isinstance(table, dict) or not all(
        isinstance(v, str | int | float | bool) for v in table.values()
    ):
        raise UserError(f"recipe {path}: [vars] must be a table of NAME = string or number")
    variables = {str(k): str(v) for k, v in table.items()}
    variables.update(overrides or {})
    entries = raw.get("stages", [])
    if not isinstance(entries, list):
        raise UserError(f"recipe {path}: stages must be [[stages]] tables")
    stages: list[Stage] = []
    for i, entry in enumerate(entries):
        where = f"recipe {path}, stage {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(f"{where}: every stage needs a name")
        extra = set(entry) - {"name", "command", "creates"}
        if extra:
            raise UserError(f"{where} ({entry['name']}): unknown key(s) {sorted(extra)}")
        command = entry.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if not command or not all(isinstance(a, str) for a in command):
            raise UserError(f"{where} ({entry['name']}): 'command' must be a list of strings")
        creates = entry.get("creates", [])
        if isinstance(creates, str):
            creates = [creates]
        if not isinstance(creates, list) or not all(isinstance(p, str) for p in creates):
            raise UserError(f"{where} ({entry['name']}): 'creates' must be a path or a list of paths")
        stages.append(
            Stage(
                name=entry["name"],
                command=[_substitute(a, variables, where) for a in command],
                creates=[_substitute(p, variables, where) for p in creates],
            )
        )
    if not stages:
        raise UserError(f"recipe {path} has no [[stages]]")
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UserError(f"recipe {path}: stage names must be unique, repeated: {duplicated}")
    return stages


def run_recipe(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="TOML recipe with [vars] and [[stages]].")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a recipe variable: NAME=VALUE (repeatable).")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Start at this stage (earlier ones are skipped).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Run stages even when their outputs exist.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the commands without running them.")
    ] = False,
) -> None:
    """Run a whole experiment recipe, stage after stage; finished stages are skipped."""
    overrides: dict[str, str] = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"invalid value for --set: {item!r} (expected NAME=VALUE)")
        overrides[name] = value
    stages = load_recipe(recipe, overrides)
    names = [s.name for s in stages]
    if start is not None and start not in names:
        raise UserError(f"invalid value for --from: {start!r} (stages: {', '.join(names)})")
    first = names.index(start) if start else 0

    root = ctx.find_root()
    global_args: list[str] = []
    if root.obj is not None and getattr(root.obj, "config", None):
        global_args += ["--config", str(root.obj.config)]
    if root.obj is not None and getattr(root.obj, "verbose", False):
        global_args.append("--verbose")

    for i, stage in enumerate(stages):
        shown = escape("ecgbench " + shlex.join(stage.command))
        label = escape(stage.name)
        if i < first:
            console.print(f"[dim]skip[/dim] {label} (before --from)")
            continue
        if stage.done() and not force:
            console.print(f"[dim]skip[/dim] {label}: outputs exist")
            continue
        console.rule(f"[bold]{label}[/bold]  {shown}")
        if dry_run:
            continue
        code = root.command.main(
            args=global_args + stage.command, prog_name="ecgbench", standalone_mode=False
        )
        if isinstance(code, int) and code != 0:
            raise UserError(
                f"stage {stage.name!r} failed (exit code {code}); fix it and run the recipe again"
            )
        missing = [p for p in stage.creates if not Path(p).exists()]
        if missing:
            raise UserError(f"stage {stage.name!r} finished but did not create {missing}")
