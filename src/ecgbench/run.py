"""``ecgbench run RECIPE``: a whole experiment, stage after stage, resumable.

``RECIPE`` is a TOML file, or the name of a recipe that ships in the package
(``src/ecgbench/resources/recipes``; ``ecgbench run --list`` shows them with their descriptions).

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

from ecgbench.commands import state
from ecgbench.console import console
from ecgbench.errors import UserError

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
    from ecgbench.files import read_toml

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
    entries = raw.get("stages", [])
    # --set may only give a variable the recipe has ([vars] or a {name} its stages use): a typo
    # (outt=...) must not be ignored while the run writes to the default place.
    used = set(variables) | set(_VAR.findall(str(entries)))
    unknown = sorted(set(overrides or {}) - used)
    if unknown:
        known = ", ".join(sorted(used)) or "none"
        raise UserError(
            f"--set {', '.join(unknown)}: recipe {path} has no such variable (its variables: {known})"
        )
    variables.update(overrides or {})
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


def packaged_recipes() -> dict[str, Path]:
    """The recipes that ship inside the package, by name (``quickstart`` -> .../recipes/quickstart.toml)."""
    from ecgbench.resources import RECIPES_DIR

    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.toml"))}


def find_recipe(recipe: str) -> Path:
    """A recipe file: ``recipe`` as a path when that file exists, else the packaged recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    if recipe in packaged:
        return packaged[recipe]
    names = ", ".join(packaged) or "none"
    raise UserError(f"recipe not found: {recipe} (not a file, nor a packaged recipe: {names})")


def describe_recipe(path: Path) -> str:
    """The recipe's ``description``, on one line."""
    from ecgbench.files import read_toml

    description = read_toml(path, "recipe").get("description", "")
    return " ".join(str(description).split())


def run_recipe(
    ctx: typer.Context,
    recipe: Annotated[
        str | None,
        typer.Argument(
            metavar="RECIPE", help="a TOML recipe ([vars], [[stages]]) or the name of a packaged one (--list)"
        ),
    ] = None,
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
    list_: Annotated[
        bool, typer.Option("--list", help="List the packaged recipes with their descriptions.")
    ] = False,
) -> None:
    """Run a whole experiment recipe, stage after stage; finished stages are skipped."""
    if list_:
        from ecgbench.console import stdout

        for name, path in packaged_recipes().items():
            stdout.print(f"[bold]{name}[/bold]  {escape(describe_recipe(path))}", soft_wrap=True)
        return
    if recipe is None:
        raise UserError("give a RECIPE: a recipe file or a packaged recipe's name (--list shows them)")
    overrides: dict[str, str] = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"invalid value for --set: {item!r} (expected NAME=VALUE)")
        overrides[name] = value
    stages = load_recipe(find_recipe(recipe), overrides)
    names = [s.name for s in stages]
    if start is not None and start not in names:
        raise UserError(f"invalid value for --from: {start!r} (stages: {', '.join(names)})")
    first = names.index(start) if start else 0

    root = ctx.find_root()
    global_args = state(ctx).global_args()

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
