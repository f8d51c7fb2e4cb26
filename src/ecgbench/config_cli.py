"""``ecgbench config show``: the settings every command would use."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ecgbench.commands import new_group, state
from ecgbench.console import stdout
from ecgbench.errors import UserError

app = new_group()


@app.command("show")
def config_show(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="toml or json")] = "toml",
) -> None:
    """Print the settings every command would use (defaults < --config file < ECGBENCH_* env)."""
    settings = state(ctx).settings().model_dump(mode="json")
    if fmt == "json":
        stdout.print_json(json.dumps(settings))
    elif fmt == "toml":
        stdout.print(to_toml(settings), markup=False)
    else:
        raise UserError(f"invalid value for --format: {fmt!r} (allowed: toml, json)")


def to_toml(values: dict[str, Any]) -> str:
    """Settings as TOML (flat scalars first, then one table per group; None values are left out)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value is not None:
            lines.append(f"{key} = {json.dumps(value)}")
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).strip() + "\n"
