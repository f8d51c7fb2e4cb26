"""``ecgbench run RECIPE``: a whole experiment (or a grid of them), stage after stage, from a cache.

``RECIPE`` is a TOML file, or the name of a recipe that ships in the package
(``src/ecgbench/resources/recipes``; ``ecgbench run --list`` shows them with their descriptions).

A recipe only strings together the same commands a person would type::

    [vars]
    out = "runs/demo"                  # the run folder: {out}/.stages/ records what each stage ran with
    [axes]                             # optional: a grid, one cell per combination of values
    seed = [0, 1]

    [[stages]]
    name = "prepare"
    command = ["data", "prepare", "sample", "--out", "{out}/store"]
    creates = ["{out}/store"]

    [[stages]]
    name = "split"                     # uses {seed}: one stage per cell, in the cell's own folder
    command = "data split --store {out}/store --seed {seed} --out {out}/{cell}/splits"
    creates = ["{out}/{cell}/splits/splits.parquet"]

    [[stages]]
    name = "report"                    # gather: once, after every cell; an argument that uses an axis
    gather = true                      # (or {cell}) is repeated for each cell, with its flag if it has one
    command = "infer report {out}/{cell}/eval --out {out}/report"
    creates = ["{out}/report/report.json"]

``{name}`` is replaced by a value from ``[vars]`` (values may use other variables) or ``--set NAME=VALUE``
(``--set AXIS=a,b`` replaces an axis's values); ``{axis}`` by the cell's value and ``{cell}`` by the cell's
name (``seed=0``; axes in recipe order, ``name=value`` joined by commas). Relative paths are used as written,
from the current directory. A stage may list ``inputs``: files or folders it reads that no stage makes
(a corpus, a question set); a run checks that every input of the stages it will run exists before it runs any.

An axis whose values stand for more than a word gives each value a table of variables::

    [axes.representation.ecg-byte]     # value "ecg-byte" (inline: ecg-byte = {paradigm = "end2end"})
    paradigm = "end2end"
    flags = ["--tokenizer", "{out}/fold={fold}/tokenizer.json"]
    [axes.representation.signal]
    paradigm = "scratch"
    flags = []

Every value defines the same variables (strings, numbers or lists of them; they may use ``[vars]``, other
axes and ``{cell}``). ``{paradigm}`` is then the cell's value's ``paradigm``, and a list used as a whole
argument (``"{flags}"``) becomes its items (an empty list, none). A stage that uses such a variable uses its
axis, and the axes its values name (``{fold}`` above). ``--set representation=ecg-byte,signal`` chooses
values; the variables themselves change only in the recipe. A stage with ``only = {representation =
"ecg-byte"}`` (a value or a list) exists only for the cells with those values: the tokenizer that only the
ECG-Byte cells read is not trained for the others.

Caching: a stage with ``creates`` is skipped when its record (``{out}/.stages/<stage>.json``) says it
finished with the same key: the command line as resolved (with ``--config``), the ecgbench version, the
``ECGBENCH_*`` variables, the SHA-256 of its ``inputs`` (and of the ``--config`` file), and which run of each
earlier stage it reads (a stage reads another's output when one of its paths is, holds or lies inside one of
that stage's ``creates``), and its ``creates`` are still as it left them. So changing one setting runs that
stage again and then every later stage that reads its outputs, nothing else. A stage that runs again first
removes its old ``creates`` (files or folders: list every output there), so its command starts clean; the
runner never removes what it did not make (outputs without a record are refused). A stage without
``creates`` runs every time.

Grids: a stage whose paths and command use no axis runs once and is shared by every cell; a stage that uses
some axes runs once per combination of those (shared by the cells that agree on them). ``--only CELL`` runs
one cell (with the shared stages it needs); ``--jobs N`` runs the shared stages, then up to N cells at once
as separate ``ecgbench run --only`` processes (logs under ``{out}/.stages/logs/``), then the gather stages;
``--cell i/n`` (a cluster job: i from 1 to n) runs every n-th cell, and whichever job finds every cell
finished runs the gather stages. Jobs share the run folder: a file lock per stage makes a stage that several
jobs need run once.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape

from ecgbench.commands import state
from ecgbench.console import console, stdout
from ecgbench.errors import UserError

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CELL = "cell"  # the variable naming a grid cell
STATE_DIR = ".stages"  # under {out}: one record per stage, locks, the logs of --jobs
RECORD_FORMAT = "ecgbench-stage"
_RECIPE_KEYS = ("description", "vars", "axes", "stages")
_STAGE_KEYS = ("name", "command", "creates", "inputs", "gather", "only")
_SAFE = "=,[].-_+@"  # kept as they are in file names made from stage and cell names


# ------------------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class StageSpec:
    """A stage as the recipe writes it: variables expanded, axes and ``{cell}`` left for each cell."""

    name: str
    command: list[str]
    creates: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    gather: bool = False
    axes: tuple[str, ...] = ()  # the axes it uses, in recipe order (every axis when it uses {cell})
    input_vars: tuple[str, ...] = ()  # the [vars] its inputs name: what to --set when one is missing
    only: dict[str, tuple[str, ...]] = field(default_factory=dict)  # runs for the cells with these values


@dataclass(frozen=True)
class Cell:
    values: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.values)


AxisVars = dict[str, dict[str, "str | list[str]"]]  # axis value -> its variables (expanded [vars])


@dataclass
class Recipe:
    path: Path
    description: str
    out: str | None  # the run folder ([vars] out), where the stage records live
    axes: dict[str, list[str]]
    stages: list[StageSpec]
    # Axes whose values carry variables ([axes.NAME.VALUE] tables): axis -> value -> variable -> value.
    axis_vars: dict[str, AxisVars] = field(default_factory=dict)

    @property
    def cells(self) -> list[Cell]:
        cells = [Cell(())]
        for axis, values in self.axes.items():
            cells = [Cell((*c.values, (axis, v))) for c in cells for v in values]
        return cells


def _expand(
    text: str, variables: dict[str, str], keep: set[str], where: str, seen: tuple[str, ...] = ()
) -> str:
    """``text`` with every ``{var}`` replaced (recursively); names in ``keep`` (axes, cell) are left."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in keep:
            return match.group(0)
        if name not in variables:
            hint = " ({cell} names a grid cell: define [axes])" if name == CELL else ""
            raise UserError(
                f"{where}: unknown variable {{{name}}} (define it under [vars] or with --set){hint}"
            )
        if name in seen:
            raise UserError(f"{where}: variable {{{name}}} refers to itself ({' -> '.join((*seen, name))})")
        return _expand(variables[name], variables, keep, where, (*seen, name))

    return _VAR.sub(value, text)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _paths(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise UserError(f"{where}: '{key}' must be a path or a list of paths")
    return value


def load_recipe(path: Path, overrides: dict[str, str] | None = None) -> Recipe:
    """The recipe at ``path`` with ``--set`` overrides applied, checked; a one-line UserError otherwise."""
    from ecgbench.files import read_toml

    overrides = dict(overrides or {})
    raw = read_toml(path, "recipe")
    unknown = set(raw) - set(_RECIPE_KEYS)
    if unknown:
        raise UserError(
            f"recipe {path}: unknown key(s) {sorted(unknown)} (allowed: {', '.join(_RECIPE_KEYS)})"
        )
    table = raw.get("vars", {})
    if not isinstance(table, dict) or not all(_scalar(v) for v in table.values()):
        raise UserError(f"recipe {path}: [vars] must be a table of NAME = string or number")
    variables = {str(k): str(v) for k, v in table.items()}
    axes_table = raw.get("axes", {})
    if not isinstance(axes_table, dict):
        raise UserError(
            f"recipe {path}: [axes] must be a table of NAME = [values] or [axes.NAME.VALUE] tables"
        )
    axes: dict[str, list[str]] = {}
    declared: dict[str, list[str]] = {}  # each axis's values as the recipe writes them (before --set)
    raw_axis_vars: dict[str, dict[str, dict[str, Any]]] = {}
    for name, values in axes_table.items():
        if name in variables or name == CELL:
            raise UserError(f"recipe {path}: axis {name!r} is also a variable name; rename one of them")
        if isinstance(values, dict):  # [axes.NAME.VALUE]: values that carry variables
            raw_axis_vars[name] = _axis_value_tables(path, name, values)
            values = list(values)
        elif not isinstance(values, list) or not all(_scalar(v) for v in values):
            raise UserError(
                f"recipe {path}: axis {name!r} must be a list of strings or numbers, "
                f"or [axes.{name}.VALUE] tables"
            )
        declared[name] = [str(v) for v in values]
        if name in overrides:  # --set AXIS=a,b
            values = [v for v in overrides.pop(name).split(",") if v]
            missing = [v for v in values if name in raw_axis_vars and v not in raw_axis_vars[name]]
            if missing:
                raise UserError(
                    f"--set {name}={','.join(values)}: axis {name!r} has no value {missing[0]!r} "
                    f"(its values: {', '.join(raw_axis_vars[name])})"
                )
        if not values:
            raise UserError(f"recipe {path}: axis {name!r} has no values")
        axes[name] = [str(v) for v in dict.fromkeys(values)]
    owners: dict[str, str] = {}  # each axis-value variable -> its axis
    for axis, by_value in raw_axis_vars.items():
        for var in next(iter(by_value.values())):
            clash = "a [vars] name" if var in variables else "an axis" if var in axes or var == CELL else None
            if var in owners:
                clash = f"a variable of axis {owners[var]!r}"
            if clash:
                raise UserError(
                    f"recipe {path}: variable {var!r} of axis {axis!r} is also {clash}; rename one of them"
                )
            owners[var] = axis
    entries = raw.get("stages", [])
    # --set may only give a variable the recipe has ([vars] or a {name} its stages use): a typo
    # (outt=...) must not be ignored while the run writes to the default place.
    found = set(_VAR.findall(str(entries) + str(raw_axis_vars)))
    used = set(variables) | found - set(axes) - set(owners) - {CELL}
    per_value = sorted(set(overrides) & set(owners))
    if per_value:
        var = per_value[0]
        raise UserError(
            f"--set {var}: {var!r} is a variable of each value of axis {owners[var]!r}; choose values with "
            f"--set {owners[var]}=a,b (or change it in the recipe)"
        )
    unknown = sorted(set(overrides) - used)
    if unknown:
        known = ", ".join(sorted(used | set(axes))) or "none"
        raise UserError(
            f"--set {', '.join(unknown)}: recipe {path} has no such variable (its variables: {known})"
        )
    variables.update(overrides)
    if not isinstance(entries, list):
        raise UserError(f"recipe {path}: stages must be [[stages]] tables")
    keep = set(axes) | set(owners) | ({CELL} if axes else set())
    axis_vars: dict[str, AxisVars] = {
        axis: {
            value: {
                var: [
                    _expand(x, variables, keep, f"recipe {path}, axis {axis} value {value} ({var})")
                    for x in v
                ]
                if isinstance(v, list)
                else _expand(v, variables, keep, f"recipe {path}, axis {axis} value {value} ({var})")
                for var, v in by_var.items()
            }
            for value, by_var in by_value.items()
        }
        for axis, by_value in raw_axis_vars.items()
    }
    listed = {  # the list-valued variables
        var for by_value in axis_vars.values() for by_var in by_value.values() for var, v in by_var.items()
        if isinstance(v, list)
    }  # fmt: skip

    def axes_named(name: str) -> list[str]:
        if name == CELL:
            return list(axes)
        return [name] if name in axes else [owners[name]] if name in owners else []

    # Which axes each axis-value variable brings with it: its own, and those its values name.
    brings = {
        var: {owners[var]}
        | {
            a
            for by_var in axis_vars[owners[var]].values()
            for name in _VAR.findall(str(by_var[var]))
            for a in axes_named(name)
        }
        for var in owners
    }
    stages: list[StageSpec] = []
    for i, entry in enumerate(entries):
        where = f"recipe {path}, stage {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise UserError(f"{where}: every stage needs a name")
        where += f" ({entry['name']})"
        extra = set(entry) - set(_STAGE_KEYS)
        if extra:
            raise UserError(f"{where}: unknown key(s) {sorted(extra)} (allowed: {', '.join(_STAGE_KEYS)})")
        command = entry.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if not command or not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise UserError(f"{where}: 'command' must be a list of strings")
        gather = entry.get("gather", False)
        if not isinstance(gather, bool):
            raise UserError(f"{where}: 'gather' must be true or false")
        fields = {
            "command": [_expand(a, variables, keep, where) for a in command],
            "creates": [_expand(p, variables, keep, where) for p in _paths(entry, "creates", where)],
            "inputs": [_expand(p, variables, keep, where) for p in _paths(entry, "inputs", where)],
        }
        for arg in (a for v in fields.values() for a in v):
            inside = [n for n in _VAR.findall(arg) if n in listed]
            if inside and arg != f"{{{inside[0]}}}":
                raise UserError(
                    f"{where}: {{{inside[0]}}} is a list (of axis {owners[inside[0]]!r}): use it as a whole "
                    f'argument, "{{{inside[0]}}}", which becomes its items'
                )
        only = _only(entry.get("only", {}), declared, where)
        named = set(_VAR.findall(" ".join(a for v in fields.values() for a in v))) | set(only)
        named |= {a for var in named & set(owners) for a in brings[var]}
        stage_axes = tuple(axes) if CELL in named else tuple(a for a in axes if a in named)
        if gather and any(_VAR.search(p) for p in fields["creates"]):
            raise UserError(
                f"{where}: a gather stage runs once: its 'creates' cannot use an axis or {{cell}}"
            )
        named_inputs = (n for p in _paths(entry, "inputs", where) for n in _VAR.findall(p) if n in variables)
        input_vars = tuple(dict.fromkeys(named_inputs))
        stages.append(
            StageSpec(
                entry["name"],
                **fields,
                gather=gather,
                axes=() if gather else stage_axes,
                input_vars=input_vars,
                only=only,
            )
        )
    if not stages:
        raise UserError(f"recipe {path} has no [[stages]]")
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UserError(f"recipe {path}: stage names must be unique, repeated: {duplicated}")
    out = _expand("{out}", variables, set(), f"recipe {path}") if "out" in variables else None
    if out is None and any(s.creates for s in stages):
        raise UserError(
            f"recipe {path}: define [vars] out, the run folder "
            f"(its {STATE_DIR}/ records what each stage ran with)"
        )
    description = " ".join(str(raw.get("description", "")).split())
    return Recipe(path, description, out, axes, stages, axis_vars)


def _only(table: Any, declared: dict[str, list[str]], where: str) -> dict[str, tuple[str, ...]]:
    """A stage's ``only = {AXIS = VALUE or [VALUES]}``: the cells it runs for (it uses those axes)."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: 'only' must be a table of AXIS = value or [values]")
    only: dict[str, tuple[str, ...]] = {}
    for axis, values in table.items():
        values = values if isinstance(values, list) else [values]
        if axis not in declared:
            raise UserError(f"{where}: 'only' names {axis!r}, which is no axis (axes: {', '.join(declared)})")
        unknown = [str(v) for v in values if not _scalar(v) or str(v) not in declared[axis]]
        if unknown or not values:
            raise UserError(
                f"{where}: 'only' gives axis {axis!r} the value {unknown[0] if unknown else 'none'!r} "
                f"(its values: {', '.join(declared[axis])})"
            )
        only[axis] = tuple(str(v) for v in values)
    return only


def _axis_value_tables(path: Path, axis: str, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """[axes.AXIS.VALUE] tables, checked: each a table of NAME = string, number or list of them, and every
    value defining the same variables (a stage that uses one must find it in every cell)."""
    where = f"recipe {path}: axis {axis!r}"
    if not values:
        raise UserError(f"{where} has no values")
    tables: dict[str, dict[str, Any]] = {}
    for value, table in values.items():
        ok = isinstance(table, dict) and all(
            _scalar(v) or (isinstance(v, list) and all(_scalar(x) for x in v)) for v in table.values()
        )
        if not ok:
            raise UserError(
                f"{where}, value {value!r}: [axes.{axis}.{value}] must be a table of NAME = string, number "
                "or list of them"
            )
        tables[str(value)] = {
            str(k): [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in table.items()
        }
    first, names = next(iter(tables)), set(next(iter(tables.values())))
    for value, table in tables.items():
        if set(table) != names:
            lacks, extra = sorted(names - set(table)), sorted(set(table) - names)
            detail = f"lacks {lacks}" if lacks else f"has {extra}, which {first!r} does not define"
            raise UserError(
                f"{where}, value {value!r} {detail}: every value of an axis defines the same variables"
            )
    return tables


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


# --------------------------------------------------------------------------------------------- plan


@dataclass
class Instance:
    """One stage for one combination of the axes it uses: what runs, once."""

    spec: StageSpec
    order: int  # the stage's position in the recipe
    values: tuple[tuple[str, str], ...]
    command: list[str]
    creates: list[str]
    inputs: list[str]
    cells: list[int]  # the cells that need it
    deps: list[int] = field(default_factory=list)  # plan indices of the earlier stages whose outputs it reads

    @property
    def id(self) -> str:
        return self.spec.name + (f"[{Cell(self.values).name}]" if self.values else "")


def _cell_dir(name: str) -> str:
    """A cell's name as one path component (a value holding '/' must not make folders)."""
    return quote(name, safe=_SAFE)


def _value_vars(values: dict[str, str], axis_vars: dict[str, AxisVars]) -> dict[str, str | list[str]]:
    """The variables that the axis values in ``values`` carry."""
    return {
        var: v
        for axis, by_value in axis_vars.items()
        if axis in values
        for var, v in by_value[values[axis]].items()
    }


def _fill(text: str, values: dict[str, str], axis_vars: dict[str, AxisVars] | None = None) -> str:
    """``text`` for one combination of axis values: its axes, ``{cell}`` and the variables of those values."""
    own = _value_vars(values, axis_vars or {})

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == CELL:
            return _cell_dir(Cell(tuple(values.items())).name)
        if name in own:
            given = own[name]
            return _fill(" ".join(given) if isinstance(given, list) else given, values)
        return values.get(name, match.group(0))

    return _VAR.sub(value, text)


def _fill_args(args: list[str], values: dict[str, str], axis_vars: dict[str, AxisVars]) -> list[str]:
    """Arguments for one combination of axis values; an argument that is a list variable (``"{flags}"``)
    becomes that list's items (none for an empty list)."""
    own = _value_vars(values, axis_vars)
    out: list[str] = []
    for arg in args:
        match = _VAR.fullmatch(arg)
        items = own.get(match.group(1)) if match else None
        if isinstance(items, list):
            out += [_fill(item, values) for item in items]
        else:
            out.append(_fill(arg, values, axis_vars))
    return out


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _related(a: str, b: str) -> bool:
    """One path is the other, or holds it."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def _arg_paths(command: list[str]) -> list[str]:
    return [a.partition("=")[2] if a.startswith("-") and "=" in a else a for a in command if a]


def build_plan(recipe: Recipe) -> list[Instance]:
    """Every stage instance in run order, with the earlier instances whose outputs each one reads."""
    plan: list[Instance] = []
    for order, spec in enumerate(recipe.stages):
        # a stage with `only` belongs to the cells with those axis values
        cells = [c for c in recipe.cells if all(dict(c.values)[a] in v for a, v in spec.only.items())]
        if not cells:
            continue
        if spec.gather:
            command: list[str] = []
            for k, arg in enumerate(spec.command):
                if not _VAR.search(arg):
                    command.append(arg)
                    continue
                # one entry per distinct cell value (a list variable's items stay together)
                per_cell = dict.fromkeys(
                    tuple(_fill_args([arg], dict(c.values), recipe.axis_vars)) for c in cells
                )
                filled = [a for items in per_cell for a in items]
                flag = spec.command[k - 1] if k and spec.command[k - 1].startswith("-") else None
                if flag is not None and not _VAR.search(flag):
                    # --npy {cell}/x.npy: a repeatable flag is given once per value (it is the last arg)
                    command[-1:] = [a for value in filled for a in (flag, value)]
                else:
                    command += filled
            inputs = list(
                dict.fromkeys(
                    p for c in cells for p in _fill_args(spec.inputs, dict(c.values), recipe.axis_vars)
                )
            )
            members = [recipe.cells.index(c) for c in cells]
            plan.append(Instance(spec, order, (), command, spec.creates, inputs, members))
            continue
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for cell in cells:
            key = tuple(kv for kv in cell.values if kv[0] in spec.axes)
            groups.setdefault(key, []).append(recipe.cells.index(cell))
        for values, members in groups.items():
            given = dict(values)
            plan.append(
                Instance(
                    spec,
                    order,
                    values,
                    _fill_args(spec.command, given, recipe.axis_vars),
                    _fill_args(spec.creates, given, recipe.axis_vars),
                    _fill_args(spec.inputs, given, recipe.axis_vars),
                    members,
                )
            )
    state_dir = _norm(os.path.join(recipe.out, STATE_DIR)) if recipe.out is not None else None
    made: list[tuple[int, str]] = []  # (plan index, normalised path) of every creates so far
    for j, inst in enumerate(plan):
        own = [_norm(p) for p in inst.creates]
        for c in own:
            if state_dir is not None and _related(c, state_dir) and len(c) <= len(state_dir):
                raise UserError(
                    f"recipe {recipe.path}: stage {inst.id} creates {c}, which holds the stage records "
                    f"{state_dir}: give it a folder of its own"
                )
            for i, earlier in made:
                if _related(c, earlier) and len(c) <= len(earlier):
                    other = plan[i]
                    if other.spec is inst.spec:
                        raise UserError(
                            f"recipe {recipe.path}: stage {inst.spec.name} creates {c} for several cells "
                            "(put the axes it uses, or {cell}, in its path)"
                        )
                    raise UserError(
                        f"recipe {recipe.path}: stage {inst.id} creates {c}, which holds the output of the "
                        f"earlier stage {other.id} ({earlier}); running it again would delete that: give "
                        "it a path of its own"
                    )
        reads = [_norm(p) for p in _arg_paths(inst.command) + inst.inputs] + own
        inst.deps = sorted(
            {
                i
                for i, earlier in made
                if plan[i].order < inst.order and any(_related(p, earlier) for p in reads)
            }
        )
        made += [(j, c) for c in own]
    return plan


# ---------------------------------------------------------------------------------------- records


def _fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of each file of a folder: when it is unchanged, so is the
    content hash recorded beside it (hashing a large input again on every run would be slow)."""
    if not path.is_dir():
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        st = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {"status": "unreadable"}  # ours, but of unknown state: run the stage again
    return record if isinstance(record, dict) else {"status": "unreadable"}


def _write_record(path: Path, record: dict[str, Any]) -> None:
    from ecgbench.files import atomic_write

    body = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))


def _command_change(old: list[str], new: list[str]) -> str:
    """The first difference between two command lines, as ``--lr 3e-3 -> 1e-3``."""
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        flag = old[i1 - 1] + " " if i1 > 0 and old[i1 - 1].startswith("-") and tag == "replace" else ""
        before, after = shlex.join(old[i1:i2]) or "(nothing)", shlex.join(new[j1:j2]) or "(nothing)"
        return f"{flag}{before} -> {after}"
    return "command changed"


@dataclass
class Status:
    runs: bool
    why: str
    foreign: str | None = None  # an output that exists but this recipe did not make


class Runner:
    """Decides whether each instance of a plan is cached and runs those that are not."""

    def __init__(self, recipe: Recipe, plan: list[Instance], global_args: list[str], config: Path | None):
        self.recipe, self.plan = recipe, plan
        self.global_args = global_args
        # --verbose changes what a stage prints, not what it makes: it is no part of the key.
        self.key_args = [a for a in global_args if a not in ("--verbose", "-v")]
        self.config = config
        self.state_dir = Path(recipe.out) / STATE_DIR if recipe.out is not None else None
        self.ran: list[str] = []
        self.cached: list[str] = []

    def record_path(self, inst: Instance) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{quote(inst.id, safe=_SAFE)}.json"

    @contextlib.contextmanager
    def lock(self, inst: Instance) -> Iterator[None]:
        """Holds this instance's lock: jobs that share the run folder run a stage once, one at a time."""
        if not inst.creates:
            yield
            return
        import fcntl

        path = self.record_path(inst).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                console.print(f"[dim]wait[/dim] {escape(inst.id)}: another job is running it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def key(self, inst: Instance, previous: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The instance's cache key, and the input hashes to record (reusing ``previous``'s where the
        input's size and modification times are unchanged). A missing input is a UserError."""
        from ecgbench import __version__
        from ecgbench.files import sha256_path

        known = (previous or {}).get("input_hashes", {})
        hashes: dict[str, Any] = {}
        for given in [*inst.inputs, *([str(self.config)] if self.config else [])]:
            path = Path(given)
            if not path.exists():
                raise UserError(f"stage {inst.id}: input not found: {given}")
            fingerprint = _fingerprint(path)
            old = known.get(given, {})
            digest = old["sha256"] if old.get("fingerprint") == fingerprint else sha256_path(path)
            hashes[given] = {"fingerprint": fingerprint, "sha256": digest}
        after = {}
        for i in inst.deps:
            record = _read_record(self.record_path(self.plan[i])) or {}
            after[self.plan[i].id] = record.get("token") if record.get("status") == "done" else None
        environment = {
            k: v
            for k, v in sorted(os.environ.items())
            if k.upper().startswith("ECGBENCH_") and k.upper() != "ECGBENCH_CONFIG"
        }
        key = {
            "command": [*self.key_args, *inst.command],
            "version": __version__,
            "environment": environment,
            "inputs": {k: v["sha256"] for k, v in hashes.items()},
            "after": after,
        }
        return key, hashes

    def status(self, inst: Instance, running: set[str] = frozenset()) -> Status:  # type: ignore[assignment]
        """Whether ``inst`` must run, and why; ``running`` holds the ids that run before it (dry run)."""
        if not inst.creates:
            return Status(True, "no 'creates': runs every time")
        record = _read_record(self.record_path(inst))
        if record is None:
            present = [p for p in inst.creates if Path(p).exists()]
            if present:
                return Status(
                    True,
                    f"{present[0]} exists but this recipe did not make it (the run stops here)",
                    foreign=present[0],
                )
            return Status(True, "never ran")
        if record.get("status") == "forced":
            return Status(True, "forced (--force)")
        if record.get("status") != "done":
            return Status(True, "did not finish last time")
        for given in inst.creates:
            path, made = Path(given), record.get("outputs", {}).get(given)
            if not path.exists():
                return Status(True, f"missing output: {given}")
            if made is None:
                return Status(True, f"new output: {given}")
            if not made.get("folder") and _fingerprint(path) != made.get("fingerprint"):
                from ecgbench.files import sha256_file

                if path.is_dir() or sha256_file(path) != made.get("sha256"):
                    return Status(True, f"output changed since it was made: {given}")
        try:
            key, _ = self.key(inst, record)
        except UserError as exc:
            return Status(True, str(exc).partition(": ")[2])
        old = record.get("key", {})
        if old.get("version") != key["version"]:
            return Status(True, f"ecgbench version changed ({old.get('version')} -> {key['version']})")
        if old.get("command") != key["command"]:
            return Status(
                True, f"setting changed: {_command_change(old.get('command') or [], key['command'])}"
            )
        if old.get("environment") != key["environment"]:
            names = sorted(set(old.get("environment") or {}) ^ set(key["environment"])) or sorted(
                k for k, v in key["environment"].items() if (old.get("environment") or {}).get(k) != v
            )
            return Status(True, f"ECGBENCH_* variables changed: {', '.join(names)}")
        for name, digest in key["inputs"].items():
            if (old.get("inputs") or {}).get(name) != digest:
                return Status(True, f"input changed: {name}")
        for name, token in key["after"].items():
            if name in running:
                return Status(True, f"input changed: {name} runs again")
            if (old.get("after") or {}).get(name) != token:
                return Status(True, f"input changed: {name} ran again")
        return Status(False, "cached")

    def mark_forced(self, instances: list[Instance]) -> None:
        """--force: the records of ``instances`` say they must run again (their outputs stay ours)."""
        for inst in instances:
            if inst.creates:
                path = self.record_path(inst)
                record = _read_record(path)
                if record is not None:
                    _write_record(path, {**record, "status": "forced"})

    def clear(self, inst: Instance) -> None:
        """Remove the old outputs of a stage that runs again, so its command starts clean."""
        for given in inst.creates:
            path = Path(given)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def execute(self, inst: Instance, run_command: Callable[[list[str]], Any]) -> None:
        """Run ``inst`` unless it is cached; its record says so once it finished."""
        with self.lock(inst):
            status = self.status(inst)
            if not status.runs:
                console.print(f"[dim]skip[/dim] {escape(inst.id)}: cached (same inputs and settings)")
                self.cached.append(inst.id)
                return
            if status.foreign:
                raise UserError(
                    f"stage {inst.id}: {status.foreign} exists but this recipe did not make it (no record in "
                    f"{self.state_dir}): move it away, or give the recipe another out (--set out=...)"
                )
            shown = escape("ecgbench " + shlex.join(inst.command))
            console.rule(f"[bold]{escape(inst.id)}[/bold]  {shown}")
            console.print(f"[dim]why: {escape(status.why)}[/dim]")
            record: dict[str, Any] = {}
            if inst.creates:
                path = self.record_path(inst)
                previous = _read_record(path)
                key, hashes = self.key(inst, previous)
                if previous is not None:
                    self.clear(inst)
                record = {
                    "format": RECORD_FORMAT,
                    "stage": inst.id,
                    "status": "running",
                    "key": key,
                    "input_hashes": hashes,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                _write_record(path, record)
            began = time.monotonic()
            code = run_command(inst.command)
            if isinstance(code, int) and code != 0:
                raise UserError(
                    f"stage {inst.id!r} failed (exit code {code}); fix it and run the recipe again"
                )
            missing = [p for p in inst.creates if not Path(p).exists()]
            if missing:
                raise UserError(f"stage {inst.id!r} finished but did not create {missing}")
            self.ran.append(inst.id)
            if inst.creates:
                _write_record(self.record_path(inst), self._finished(inst, record, time.monotonic() - began))

    def _finished(self, inst: Instance, record: dict[str, Any], seconds: float) -> dict[str, Any]:
        from ecgbench.files import sha256_file

        outputs = {}
        for given in inst.creates:
            path = Path(given)
            outputs[given] = (
                {"folder": True}
                if path.is_dir()
                else {"fingerprint": _fingerprint(path), "sha256": sha256_file(path)}
            )
        # Each run of a stage is a new token: the stages that read its outputs run again after it.
        token = hashlib.sha256(
            f"{json.dumps(record['key'], sort_keys=True)}{time.time_ns()}".encode()
        ).hexdigest()
        return {
            **record,
            "status": "done",
            "outputs": outputs,
            "token": token[:16],
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 2),
        }


# -------------------------------------------------------------------------------------------- running


def _parse_cell_share(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UserError(f"invalid value for --cell: {text!r} (expected i/n with 1 <= i <= n, e.g. 1/4)")
    return int(match.group(1)), int(match.group(2))


def _pick_cell(recipe: Recipe, only: str) -> int:
    names = [c.name for c in recipe.cells]
    if only in names:
        return names.index(only)
    if only.isdigit() and 1 <= int(only) <= len(names):
        return int(only) - 1
    if not recipe.axes:
        raise UserError(f"--only {only}: recipe {recipe.path} has no [axes], so no cells to choose")
    raise UserError(
        f"--only {only}: no such cell (cells: {', '.join(names)}; or their number 1-{len(names)})"
    )


def _with_deps(plan: list[Instance], chosen: set[int]) -> set[int]:
    todo, done = list(chosen), set(chosen)
    while todo:
        for dep in plan[todo.pop()].deps:
            if dep not in done:
                done.add(dep)
                todo.append(dep)
    return done


def _print_plan(runner: Runner, selected: list[int], first: int, force: bool) -> None:
    recipe, plan = runner.recipe, runner.plan
    cells = recipe.cells
    where = f"; run folder {recipe.out}" if recipe.out is not None else ""
    stdout.print(
        f"recipe {escape(str(recipe.path))}: {len(plan)} stage(s), {len(cells)} cell(s){escape(where)}"
    )
    if recipe.axes:
        for i, cell in enumerate(cells, 1):
            stdout.print(f"  cell {i}: {escape(cell.name)}")
    for axis, by_value in recipe.axis_vars.items():  # what each value of an axis stands for
        for value in recipe.axes[axis]:
            shown = "; ".join(
                f"{var}=[{', '.join(v)}]" if isinstance(v, list) else f"{var}={v}"
                for var, v in by_value[value].items()
            )
            stdout.print(f"  {escape(axis)}={escape(value)}: {escape(shown)}", soft_wrap=True)
    running: set[str] = set()
    for i in selected:
        inst = plan[i]
        if inst.order < first:
            verdict, why = "skip", "before --from"
        else:
            status = Status(True, "forced (--force)") if force else runner.status(inst, running)
            verdict, why = ("runs", status.why) if status.runs else ("cached", "")
            if status.runs:
                running.add(inst.id)
        notes = [why] if why else []
        if recipe.axes and len(inst.cells) > 1:
            notes.append(f"shared by {len(inst.cells)} cells")
        stdout.print(
            f"[bold]{verdict:<6}[/bold]  {escape(inst.id)}"
            + (f": {escape('; '.join(notes))}" if notes else ""),
            soft_wrap=True,
        )
        stdout.print(f"        [dim]{escape('ecgbench ' + shlex.join(inst.command))}[/dim]", soft_wrap=True)
    stdout.print(
        f"{len(running)} to run, {sum(1 for i in selected if plan[i].order >= first) - len(running)} cached"
    )


def _missing_inputs(plan: list[Instance], selected: list[int], first: int) -> list[str]:
    """One line per declared input of the selected stages that does not exist, naming what to --set."""
    lines = []
    for k in selected:
        for path in plan[k].inputs if plan[k].order >= first else []:
            if not Path(path).exists():
                names = plan[k].spec.input_vars
                hint = f" (give it with {', '.join(f'--set {n}=PATH' for n in names)})" if names else ""
                lines.append(f"stage {plan[k].id}: input not found: {path}{hint}")
    return lines


def _run_cells_in_processes(runner: Runner, cells: list[int], jobs: int, worker_args: list[str]) -> None:
    """Each cell as its own ``ecgbench run --only CELL`` process, at most ``jobs`` at once."""
    assert runner.state_dir is not None
    logs = runner.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(cells)
    active: dict[subprocess.Popen[bytes], tuple[str, Any, Path, float]] = {}
    failed: list[str] = []
    try:
        while pending or active:
            while pending and len(active) < jobs:
                name = runner.recipe.cells[pending.pop(0)].name
                log = logs / f"{_cell_dir(name)}.log"
                handle = log.open("wb")
                command = [sys.executable, "-m", "ecgbench.cli", *worker_args, "--only", name]
                active[subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)] = (
                    name,
                    handle,
                    log,
                    time.monotonic(),
                )
                console.print(f"[bold]cell[/bold] {escape(name)}: started (log {escape(str(log))})")
            time.sleep(0.2)
            for proc in [p for p in active if p.poll() is not None]:
                name, handle, log, began = active.pop(proc)
                handle.close()
                seconds = time.monotonic() - began
                if proc.returncode == 0:
                    console.print(f"[bold]cell[/bold] {escape(name)}: done in {seconds:.0f} s")
                else:
                    lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() or [""]
                    console.print(
                        f"[red]cell {escape(name)} failed[/red] (exit {proc.returncode}): {escape(lines[-1])}"
                    )
                    failed.append(name)
    finally:
        for proc, (_, handle, _, _) in active.items():  # interrupted: stop the cells still running
            proc.terminate()
            proc.wait()
            handle.close()
    if failed:
        raise UserError(f"{len(failed)} cell(s) failed: {', '.join(failed)} (their logs are in {logs})")


def run_recipe(
    ctx: typer.Context,
    recipe: Annotated[
        str | None,
        typer.Argument(
            metavar="RECIPE",
            help="a TOML recipe ([vars], [axes], [[stages]]) or the name of a packaged one (--list)",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a recipe variable: NAME=VALUE, or an axis: NAME=a,b (repeatable)."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="Start at this stage: earlier ones are not run (with --force: redo from here)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run the stages again even when they are cached.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the plan: each stage, cached or why it runs; run nothing."),
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="List the packaged recipes with their descriptions.")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Run one grid cell (its name, e.g. seed=0, or its number in --dry-run)."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", min=1, help="Run up to N grid cells at once, as separate processes.")
    ] = 1,
    cell: Annotated[
        str | None,
        typer.Option("--cell", help="Cluster job i of n: run every n-th cell from the i-th (i from 1 to n)."),
    ] = None,
) -> None:
    """Run a whole experiment recipe (or a grid of them), stage after stage; cached stages are skipped.

    A stage is cached when its record says it ran with the same command line, inputs and ecgbench version,
    and its outputs are as it left them; changing a setting runs that stage and the stages that read its
    outputs again. See `ecgbench run --dry-run RECIPE` for the plan.
    """
    if list_:
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
    if sum(x is not None for x in (only, cell)) + (jobs > 1) > 1:
        raise UserError("give one of --only, --jobs and --cell")
    if force and cell is not None:
        raise UserError(
            "--force with --cell would make every job redo the shared stages: run the recipe once with "
            "--force (and --jobs N), or change a setting"
        )
    path = find_recipe(recipe)
    loaded = load_recipe(path, overrides)
    plan = build_plan(loaded)
    names = [s.name for s in loaded.stages]
    if start is not None and start not in names:
        raise UserError(f"invalid value for --from: {start!r} (stages: {', '.join(names)})")
    first = names.index(start) if start else 0
    cli_state = state(ctx)
    runner = Runner(loaded, plan, cli_state.global_args(), cli_state.config)

    cells = list(range(len(loaded.cells)))
    gather_now = True  # whether the gather stages are part of this run
    if only is not None:
        cells, gather_now = [_pick_cell(loaded, only)], len(loaded.cells) == 1
    elif cell is not None:
        i, n = _parse_cell_share(cell)
        cells = cells[i - 1 :: n]
    chosen = {k for k, inst in enumerate(plan) if not inst.spec.gather and set(inst.cells) & set(cells)}
    gathers = [k for k, inst in enumerate(plan) if inst.spec.gather]
    selected = sorted(_with_deps(plan, chosen) | (set(gathers) if gather_now or cell is not None else set()))

    if dry_run:
        _print_plan(runner, selected, first, force)
        for missing in _missing_inputs(plan, selected, first):
            stdout.print(
                f"[yellow]{escape(missing)}[/yellow]: the run would stop before any stage", soft_wrap=True
            )
        return
    # Every declared input exists before anything runs: a wrong corpus path must not surface hours later.
    absent = _missing_inputs(plan, selected, first)
    if absent:
        raise UserError(f"{absent[0]}; nothing ran")
    if force:
        runner.mark_forced([plan[k] for k in selected if plan[k].order >= first])
    began = time.monotonic()
    root = ctx.find_root()

    def run_command(command: list[str]) -> Any:
        return root.command.main(
            args=runner.global_args + command, prog_name="ecgbench", standalone_mode=False
        )

    def execute(k: int) -> None:
        if plan[k].order < first:
            console.print(f"[dim]skip[/dim] {escape(plan[k].id)} (before --from)")
        else:
            runner.execute(plan[k], run_command)

    if jobs > 1 and len(cells) > 1:
        # Stages several cells share (and what they read) run here, once; then the cells side by side.
        shared = _with_deps(plan, {k for k in chosen if len(plan[k].cells) > 1})
        for k in sorted(shared):
            execute(k)
        worker_args = [*runner.global_args, "run", str(path.resolve())]
        worker_args += [a for item in set_ or [] for a in ("--set", item)]
        worker_args += ["--from", start] if start else []
        _run_cells_in_processes(runner, cells, jobs, worker_args)
        for k in sorted(set(selected) - shared - chosen):
            execute(k)
    else:
        for k in selected:
            if plan[k].spec.gather and cell is not None:
                deps = _with_deps(plan, {k}) - {k}
                waiting = [plan[d].id for d in deps if plan[d].creates and runner.status(plan[d]).runs]
                if waiting:
                    console.print(
                        f"[dim]wait[/dim] {escape(plan[k].id)}: runs once every cell has run "
                        f"(not yet: {escape(', '.join(waiting[:3]))}{', ...' if len(waiting) > 3 else ''})"
                    )
                    continue
            execute(k)
        if not gather_now and gathers:
            console.print(
                f"[dim]not run[/dim] {escape(', '.join(plan[k].id for k in gathers))}: "
                "they gather every cell (run the recipe without --only)"
            )
    minutes, seconds = divmod(int(time.monotonic() - began), 60)
    console.print(
        f"[bold]done[/bold]: {len(runner.ran)} stage(s) ran, {len(runner.cached)} cached "
        f"({minutes} min {seconds:02d} s)"
    )
    last = plan[selected[-1]] if selected else None
    if last is not None and last.creates and last.id in runner.ran + runner.cached:
        stdout.print(f"{escape(last.id)}: {escape(', '.join(last.creates))}", soft_wrap=True)
