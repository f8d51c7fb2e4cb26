"""The root ``ecgbench`` command: global options, error handling, and the command groups."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from ecgbench import __version__
from ecgbench.console import console, stdout
from ecgbench.data.cli import data_app
from ecgbench.errors import UserError
from ecgbench.run import run_recipe
from ecgbench.settings import Settings, load_settings
from ecgbench.tokenizer.cli import app as tokenizer_app


@dataclass
class CliState:
    config: Path | None = None
    verbose: bool = False

    def settings(self, **overrides: Any) -> Settings:
        """Settings from this command's flags (``group={field: value}``; ``None`` = not given)."""
        return load_settings(self.config, overrides)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _fail(ctx: click.Context, message: str) -> NoReturn:
    """One red line and exit code 2 (the traceback too with --verbose)."""
    if isinstance(ctx.obj, CliState) and ctx.obj.verbose:
        console.print_exception()
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2) from None


class _RootGroup(TyperGroup):
    """Turns user errors raised anywhere below into one red line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _fail(ctx, str(exc))
        except OSError as exc:
            # Unwritable, missing or full locations the user chose (a path that is a directory,
            # no permission, disk full) are theirs to fix too.
            where = f": {exc.filename}" if exc.filename else ""
            _fail(ctx, f"{exc.strerror or exc}{where}")
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: run the same command again to resume")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="ecgbench",
    cls=_RootGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train and evaluate ECG-language models.",
)


def _print_version(value: bool) -> None:
    if value:
        stdout.print(f"ecgbench {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="ECGBENCH_CONFIG", help="TOML file with settings, one table per group."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show details and tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = CliState(config=config, verbose=verbose)
    # Library modules log through `logging`; --verbose shows their debug detail.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
        force=True,
    )


config_app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)


@config_app.command("show")
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


app.add_typer(config_app, name="config")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(data_app, name="data")
app.command("run")(run_recipe)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
