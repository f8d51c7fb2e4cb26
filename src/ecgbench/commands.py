"""The command layer every group shares: CLI state, settings-backed options and the common option aliases.

A command group module imports from here, never from ``ecgbench.cli`` (the root imports the groups lazily),
and keeps its commands thin: parse flags, call the library, print the result.

Settings-backed options: ``@settings_options("data")`` turns every field of the ``[data]`` settings group
into a flag (name, type, help and default from the pydantic field), and hands the command the validated
group (a parameter annotated ``DataSettings``). Flags beat ``ECGBENCH_*`` variables, which beat the
``--config`` file, which beats the field defaults: the flags only fill the same settings object.

This module imports nothing heavy: ``ecgbench --help`` and ``--version`` load it.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    from ecgbench.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------------------ CLI state


@dataclass
class CliState:
    """What the root command's global options say (``--config``, ``--verbose``)."""

    config: Path | None = None
    verbose: bool = False

    def settings(self, **overrides: Any) -> Settings:
        """Settings from this command's flags (``group={field: value}``; ``None`` = not given)."""
        from ecgbench.settings import load_settings

        return load_settings(self.config, overrides)

    def global_args(self) -> list[str]:
        """The root options that recreate this state, for running another command (``ecgbench run``)."""
        return (["--config", str(self.config)] if self.config else []) + (
            ["--verbose"] if self.verbose else []
        )


def state(ctx: typer.Context) -> CliState:
    """The CLI state of the running command (a default one when a command runs outside ``ecgbench``)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def new_group(**kwargs: Any) -> typer.Typer:
    """A command group's Typer app. Its help is the one given where the root registers it (ecgbench.cli)."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False, **kwargs)


def help_names(**names: Callable[[], str]) -> type[TyperCommand]:
    """A command class (``@app.command(cls=help_names(corpora=...))``) whose parameter help may name
    things that are only known by importing heavy modules (corpus readers, source sets): ``{corpora}`` in a
    help text is replaced by ``corpora()`` when the command's help is shown, not when the group loads."""

    class NamesInHelp(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.params:
                for key, make in names.items():
                    if param.help and "{" + key + "}" in param.help:
                        param.help = param.help.replace("{" + key + "}", make())
            super().format_help(ctx, formatter)

    return NamesInHelp


# ------------------------------------------------------------------------------ shared option aliases


def out_option(help: str) -> Any:
    """``--out`` / ``-o``: where a command writes (``Annotated[Path, out_option("...")]``)."""
    return typer.Option("--out", "-o", help=help)


StoreOption = Annotated[Path, typer.Option("--store", help="segment store directory (from `data prepare`)")]
StoresOption = Annotated[
    list[Path], typer.Option("--store", help="segment store directory (repeat for several stores)")
]
SetsOption = Annotated[
    list[Path] | None, typer.Option("--sets", help="conversation set Parquet file (repeat for several)")
]
SplitsOption = Annotated[
    Path | None,
    typer.Option("--splits", help="splits.parquet from `data split` (with --split: only that split)"),
]
SplitOption = Annotated[str | None, typer.Option("--split", help="train | val | test (with --splits)")]


# --------------------------------------------------------------------------- settings-backed options


@dataclass(frozen=True)
class SettingOption:
    """One settings field exposed as a flag of a command."""

    group: str | None  # None: a top-level field such as ``seed``
    field: str
    flag: str
    param: str  # the Python parameter name Typer passes it under

    @property
    def key(self) -> str:
        return f"{self.group}.{self.field}" if self.group else self.field

    @property
    def env_var(self) -> str:
        return "ECGBENCH_" + (f"{self.group}__{self.field}" if self.group else self.field).upper()


def _completer(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def complete(incomplete: str) -> list[str]:
        return [c for c in choices if c.startswith(incomplete)]

    return complete


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(``X``, True) for ``X | None``; (annotation, False) otherwise."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return annotation, False


def _literals(annotation: Any) -> tuple[tuple[str, ...], list[Any]]:
    """The Literal values in ``annotation`` (a Literal or a union holding one) and the other union members."""
    if typing.get_origin(annotation) is Literal:
        return tuple(str(v) for v in typing.get_args(annotation)), []
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        values: list[str] = []
        others: list[Any] = []
        for arg in typing.get_args(annotation):
            found, rest = _literals(arg)
            values += found
            others += rest if found else [arg]
        return tuple(values), others
    return (), [annotation]


_METAVARS = {int: "<int>", float: "<float>", str: "<str>", Path: "<path>"}


def _default_text(flag: str, info: FieldInfo) -> str | None:
    default = info.get_default(call_default_factory=True)
    if default is None:
        return None  # the description says what an unset value means
    if isinstance(default, bool):
        return flag[2:] if default else "no-" + flag[2:]
    if isinstance(default, list | tuple):
        return ", ".join(map(str, default)) or None
    return str(default)


def _option_annotation(option: SettingOption, info: FieldInfo) -> Any:
    """``Annotated[type | None, typer.Option(...)]`` for one settings field (default None: not given)."""
    annotation, _ = _strip_optional(info.annotation)
    help_text = (info.description or "").strip()
    shown = _default_text(option.flag, info)
    if typing.get_origin(annotation) is list:
        help_text += " (repeatable)"
    if shown is not None:
        help_text += f"  [default: {shown}]"
    common = {"help": help_text, "show_default": False}
    if annotation is bool:
        no = "--no-" + option.flag[2:]
        return Annotated[bool | None, typer.Option(f"{option.flag}/{no}", **common)]
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        choices, _ = _literals(item)
        metavar = "[" + "|".join(choices) + "]" if choices else _METAVARS.get(item, "<str>")
        # Items reach the settings model as written, like single values (see below).
        return Annotated[
            list[str] | None,
            typer.Option(option.flag, metavar=metavar, autocompletion=_completer(choices), **common),
        ]
    if annotation is Path:
        return Annotated[Path | None, typer.Option(option.flag, **common)]
    # Choices, numbers and text reach the settings model as written, so a bad value gets the same
    # one-line error (naming the flag and what is allowed) as one from the environment or --config.
    choices, others = _literals(annotation)
    if choices:
        metavar = "[" + "|".join((*choices, *(_METAVARS.get(o, "<str>") for o in others))) + "]"
        return Annotated[
            str | None,
            typer.Option(option.flag, metavar=metavar, autocompletion=_completer(choices), **common),
        ]
    return Annotated[
        str | None, typer.Option(option.flag, metavar=_METAVARS.get(annotation, "<str>"), **common)
    ]


def _resolve_fields(specs: tuple[str, ...]) -> list[tuple[str | None, str, FieldInfo]]:
    from ecgbench.settings import Settings

    root = Settings.model_fields
    resolved: list[tuple[str | None, str, FieldInfo]] = []
    for spec in specs:
        group, _, field = spec.rpartition(".")
        if not group and field in root and _group_model(root[field]) is not None:  # a whole group
            for name, info in _group_model(root[field]).model_fields.items():  # type: ignore[union-attr]
                resolved.append((field, name, info))
        elif not group and field in root:  # a top-level field, e.g. seed
            resolved.append((None, field, root[field]))
        elif group in root and (model := _group_model(root[group])) and field in model.model_fields:
            resolved.append((group, field, model.model_fields[field]))
        else:
            raise TypeError(f"settings_options: no settings group or field {spec!r}")
    flags = [_flag(f) for _, f, _ in resolved]
    clashes = sorted({f for f in flags if flags.count(f) > 1})
    if clashes:
        raise TypeError(f"settings_options: two settings would use the flag(s) {clashes}")
    return resolved


def _group_model(info: FieldInfo) -> type[BaseModel] | None:
    from pydantic import BaseModel

    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def settings_options(*specs: str) -> Callable[[F], F]:
    """Expose settings fields as the decorated command's flags and pass it the validated settings.

    ``specs``: a group name (``"data"``: every field of the group), ``"group.field"`` (one field), or a
    top-level field (``"seed"``). Each becomes ``--field-name`` with the field's type, description and
    default. The command declares what it wants filled in, and Typer never sees those parameters:

    * a parameter annotated with a group's model (``data: DataSettings``) gets that group,
    * one annotated ``Settings`` gets the whole resolved settings,
    * one named like a listed top-level field (``seed: int``) gets its value.

    Groups a command reads without exposing their flags (e.g. ``tokenizer: TokenizerSettings`` in a
    command that only lists ``"sets"``) still come from the environment, ``--config`` and defaults.
    """

    fields = _resolve_fields(specs)  # a spec that names no setting fails where the command is declared

    def decorate(func: F) -> F:
        from ecgbench.settings import Settings

        options = [
            SettingOption(group, field, _flag(field), f"_setting_{group or 'root'}__{field}")
            for group, field, _ in fields
        ]
        signature = inspect.signature(func, eval_str=True)
        group_models = {
            model: name for name, info in Settings.model_fields.items() if (model := _group_model(info))
        }
        top_level = {field for group, field, _ in fields if group is None}
        inject: dict[str, Callable[[Settings], Any]] = {}
        kept: list[inspect.Parameter] = []
        context_param = None
        for param in signature.parameters.values():
            annotation = param.annotation
            if isinstance(annotation, type) and issubclass(annotation, typer.Context):
                context_param = param.name
                kept.append(param)
            elif annotation is Settings:
                inject[param.name] = lambda s: s
            elif isinstance(annotation, type) and annotation in group_models:
                inject[param.name] = functools.partial(lambda s, g: getattr(s, g), g=group_models[annotation])
            elif param.name in top_level:
                inject[param.name] = functools.partial(lambda s, f: getattr(s, f), f=param.name)
            else:
                kept.append(param)
        added = [
            inspect.Parameter(
                option.param,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=_option_annotation(option, info),
            )
            for option, (_, _, info) in zip(options, fields, strict=True)
        ]
        if context_param is None:  # the settings need the root's --config: ask Typer for the context
            context_param = "_settings_context"
            added.append(
                inspect.Parameter(context_param, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
            )
        own_context = context_param != "_settings_context"
        # Every parameter becomes keyword-only: Typer passes them all by name anyway.
        kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept]
        new_signature = signature.replace(
            parameters=[*kept, *added], return_annotation=inspect.Signature.empty
        )

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            flags: dict[str, Any] = {}
            given: set[str] = set()
            for option in options:
                value = kwargs.pop(option.param)
                if value is None or (isinstance(value, list | tuple) and not value):
                    continue  # not given on the command line
                given.add(option.flag)
                if option.group is None:
                    flags[option.field] = value
                else:
                    flags.setdefault(option.group, {})[option.field] = value
            ctx = kwargs[context_param] if own_context else kwargs.pop(context_param)
            ctx.meta[_GIVEN_FLAGS] = given
            settings = state(ctx).settings(**flags)
            for name, pick in inject.items():
                kwargs[name] = pick(settings)
            # Looked up at call time so a test can stand in for the command body.
            return command.__wrapped__(**kwargs)  # type: ignore[attr-defined]

        command.__signature__ = new_signature  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in new_signature.parameters.values()}
        command.__doc__ = _with_settings_note(func.__doc__, options)
        command.setting_options = options  # type: ignore[attr-defined]
        return command  # type: ignore[return-value]

    return decorate


_GIVEN_FLAGS = "ecgbench.given_flags"


def given_flags(ctx: typer.Context) -> set[str]:
    """The settings flags given on this command line (``{"--num-merges", ...}``), not from env or config."""
    return set(ctx.meta.get(_GIVEN_FLAGS, ()))


def _with_settings_note(doc: str | None, options: list[SettingOption]) -> str:
    groups = sorted({o.group for o in options if o.group})
    where = ", ".join(f"[{g}]" for g in groups)
    note = "Settings flags also read ECGBENCH_<GROUP>__<FIELD> variables" + (
        f" and the {where} table{'s' if len(groups) > 1 else ''} of --config." if groups else " and --config."
    )
    return f"{inspect.cleandoc(doc or '')}\n\n{note}"
