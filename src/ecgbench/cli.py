"""The root ``ecgbench`` command: global options, error handling, and the command groups.

Groups are imported only when they run (or when their own help is asked for), so ``ecgbench --help``,
``--version`` and shell completion stay fast. To add a group, add one line to ``GROUPS``: its name, where
its Typer app (or a single command function) lives, and the one-line help the root lists.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.24 carries its own copy of click
    from typer._click.core import Command as _ClickCommand
    from typer._click.shell_completion import CompletionItem
except ImportError:  # older typer runs on click itself
    from click.core import Command as _ClickCommand
    from click.shell_completion import CompletionItem

from ecgbench.commands import CliState
from ecgbench.console import console, stdout
from ecgbench.errors import UserError

# name: ("module:attribute", help). The attribute is a Typer app (a group) or a function (one command).
GROUPS: dict[str, tuple[str, str]] = {
    "config": ("ecgbench.config_cli:app", "Inspect the resolved settings."),
    "data": ("ecgbench.data.cli:data_app", "Prepare corpora into segment stores; build conversation sets."),
    "tokenizer": (
        "ecgbench.tokenizer.cli:app",
        "ECG-Byte tokenizer: ECG symbols (a..z) compressed with BPE.",
    ),
    "assets": (
        "ecgbench.models.assets_cli:app",
        "Offline model assets: real vocabularies and SmolLM2 weights.",
    ),
    "encoder": ("ecgbench.train.encoder_cli:app", "Stage-1 ECG and vision encoders: train, embed."),
    "train": ("ecgbench.train.cli:app", "Train ELMs in every paradigm (end2end, llava, ..., encoder-free), then DPO."),
    "infer": ("ecgbench.infer.cli:app", "Generate answers, evaluate them, compare runs, report."),
    "judge": ("ecgbench.judge.cli:app", "Preference sets for DPO: model judges (compare, rank), export."),
    "demo": ("ecgbench.demo.cli:demo_command", "Chat with ELMs about an ECG in a local page; rate answers."),
    "run": ("ecgbench.run:run_recipe", "Run an experiment recipe or grid, each stage cached by its inputs and settings."),
}


@functools.cache
def load_group(name: str) -> Any:
    """The click command of a registered group or command (imports its module; built once per process)."""
    target, help_text = GROUPS[name]
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    if isinstance(obj, typer.Typer):
        if obj.info.help is None:
            obj.info.help = help_text
        command = typer.main.get_group(obj)
    else:
        single = typer.Typer()
        single.command(name)(obj)
        command = typer.main.get_command(single)
    command.name = name
    _plain_help(command)
    return command


def _plain_help(command: Any) -> None:
    """Click's own help layout for a command and everything under it: it wraps long flag names and help
    at the terminal width (80 columns and up) instead of cutting them off as rich's tables do."""
    if hasattr(command, "rich_markup_mode"):
        command.rich_markup_mode = None
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub)


def _short_help(text: str, limit: int) -> str:
    first = text.strip().split("\n\n")[0].replace("\n", " ")
    return first if len(first) <= limit else first[: max(limit - 3, 1)].rstrip() + "..."


def _fail(ctx: Any, message: str) -> NoReturn:
    """One red line and exit code 2 (the traceback too with --verbose)."""
    if isinstance(ctx.obj, CliState) and ctx.obj.verbose:
        console.print_exception()
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2) from None


class _RootGroup(TyperGroup):
    """Loads groups on first use and turns user errors raised below into one red line, exit code 2."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *GROUPS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in GROUPS:
            return load_group(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # From the registry: listing the groups must not import them.
        width = max(map(len, GROUPS))
        rows = [(name, _short_help(text, formatter.width - 6 - width)) for name, (_, text) in GROUPS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        # Group names from the registry (completing them must not import them), then option names
        # (`--ver<TAB>`) as a plain click command completes them.
        groups = [CompletionItem(n, help=text) for n, (_, text) in GROUPS.items() if n.startswith(incomplete)]
        return groups + _ClickCommand.shell_complete(self, ctx, incomplete)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _fail(ctx, str(exc))
        except OSError as exc:
            # Unwritable, missing or full locations the user chose (a path that is a directory,
            # no permission, disk full) are theirs to fix too: the reason and the file, never a bare path.
            from ecgbench.errors import describe_os_error

            _fail(ctx, describe_os_error(exc))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: run the same command again to resume")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="ecgbench",
    cls=_RootGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train and evaluate ECG-language models.",
)


def _print_version(value: bool) -> None:
    if value:
        from ecgbench import __version__

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
    from rich.logging import RichHandler

    ctx.obj = CliState(config=config, verbose=verbose)
    # Library modules log through `logging`; --verbose shows their debug detail.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, markup=False)],
        force=True,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
