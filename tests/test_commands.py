"""Settings-backed flags: every field a command exposes is in its help with its default, and a flag, an
``ECGBENCH_*`` variable and a ``--config`` value each reach the command, with flags > env > config."""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ecgbench.cli import GROUPS, app, load_group
from ecgbench.commands import SettingOption, new_group, settings_options
from ecgbench.settings import ModelSettings, Settings

runner = CliRunner()


def _commands(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        return [(path, command)]
    return [found for name, sub in subcommands.items() for found in _commands(sub, (*path, name))]


@functools.cache
def _every_command() -> dict[tuple[str, ...], Any]:
    return dict(found for name in GROUPS for found in _commands(load_group(name), (name,)))


def _options(command: Any) -> list[SettingOption]:
    return list(getattr(command.callback, "setting_options", []))


SETTING_CASES = [
    pytest.param(path, option, id=f"{' '.join(path)} {option.flag}")
    for path, command in _every_command().items()
    for option in _options(command)
]
SETTINGS_COMMANDS = [
    pytest.param(path, id=" ".join(path)) for path, command in _every_command().items() if _options(command)
]


def test_commands_expose_settings() -> None:
    exposed = {(p, o.key) for p, o in (case.values for case in SETTING_CASES)}
    assert (("data", "prepare"), "data.seg_len") in exposed
    assert (("tokenizer", "train"), "tokenizer.lead_boundaries") in exposed
    assert (("data", "split"), "seed") in exposed


def _field(option: SettingOption) -> tuple[type[BaseModel], Any]:
    if option.group is None:
        return Settings, Settings.model_fields[option.field]
    model = Settings.model_fields[option.group].annotation
    return model, model.model_fields[option.field]


def _shown_default(option: SettingOption, default: Any) -> str | None:
    if default is None:
        return None
    if isinstance(default, bool):
        return option.flag[2:] if default else "no-" + option.flag[2:]
    if isinstance(default, list):
        return ", ".join(map(str, default)) or None
    return str(default)


def _candidates(annotation: Any, default: Any, tmp_path: Path, bounds: tuple[float, ...] = ()) -> list[Any]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [
            c for arg in args if arg is not type(None) for c in _candidates(arg, default, tmp_path, bounds)
        ]
    if typing.get_origin(annotation) is Literal:
        return list(args)
    if annotation is bool:
        return [not default]
    if typing.get_origin(annotation) is list:
        items = [
            c
            for c in _candidates(args[0], None, tmp_path)
            if not isinstance(default, list) or c not in default
        ]
        return [items[:2], items[:1]]
    if annotation is Path:
        return [tmp_path / "given"]
    if annotation in (int, float):
        base = default if isinstance(default, int | float) and not isinstance(default, bool) else 3
        found = [base + 1, base - 1, base * 2, base // 2 if annotation is int else base / 2, 5]
        for bound in bounds:  # the field's own limits, and just inside them
            found += [bound, bound + 1, bound - 1]
        return [annotation(v) for v in found]
    return ["given-text"]


def _bounds(info: Any) -> tuple[float, ...]:
    limits = (getattr(m, name, None) for m in info.metadata for name in ("ge", "gt", "le", "lt"))
    return tuple(v for v in limits if isinstance(v, int | float))


# Fields whose allowed values a validator decides rather than the type (a Literal type needs no entry).
VALUES: dict[str, Any] = {"infer.ecg": ["zeros", "noise"], "dpo.label_smoothing": 0.1}


def _other_value(option: SettingOption, tmp_path: Path) -> Any:
    """A valid value of the field that is not its default."""
    model, info = _field(option)
    default = info.get_default(call_default_factory=True)
    for candidate in [
        *([VALUES[option.key]] if option.key in VALUES else []),
        *_candidates(info.annotation, default, tmp_path, _bounds(info)),
    ]:
        if candidate == default:
            continue
        try:
            if option.group is None:
                Settings(**{option.field: candidate})
            else:
                model(**{option.field: candidate})
        except ValueError:
            continue
        return candidate
    raise AssertionError(f"no valid non-default value found for {option.key}")


def _placeholder_args(command: Any, options: list[SettingOption]) -> list[str]:
    """Values for the command's required arguments and options (the command body does not run)."""
    settings_params = {o.param for o in options}
    args: list[str] = []
    for param in command.params:
        if not param.required or param.name in settings_params:
            continue
        if param.param_type_name == "argument":
            args.append("x")
        else:
            args += [param.opts[0], "x"]
    return args


def _capture(monkeypatch: pytest.MonkeyPatch, command: Any) -> dict[str, Any]:
    """Stand in for the command body: record what the command would have been called with."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(command.callback.__wrapped__, "__wrapped__", lambda **kwargs: seen.update(kwargs))
    return seen


def _received(seen: dict[str, Any], option: SettingOption) -> Any:
    assert seen, "the command did not run"
    if option.group is None:
        return seen[option.field]
    model, _ = _field(option)
    for value in seen.values():
        if isinstance(value, model):
            return getattr(value, option.field)
        if isinstance(value, Settings):
            return getattr(getattr(value, option.group), option.field)
    raise AssertionError(f"the command was not given its {option.group} settings")


def _flag_args(option: SettingOption, value: Any) -> list[str]:
    if isinstance(value, bool):
        return [option.flag if value else "--no-" + option.flag[2:]]
    if isinstance(value, list):
        return [arg for item in value for arg in (option.flag, str(item))]
    return [option.flag, str(value)]


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _toml(option: SettingOption, value: Any) -> str:
    shown = json.dumps(str(value) if isinstance(value, Path) else value)
    return (
        f"{option.field} = {shown}\n"
        if option.group is None
        else f"[{option.group}]\n{option.field} = {shown}\n"
    )


def _same(received: Any, value: Any) -> bool:
    return received == value or (isinstance(value, Path) and Path(received) == value)


@pytest.mark.parametrize("path", SETTINGS_COMMANDS)
def test_setting_flags_show_their_defaults(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"-\n\s+", "-", result.output).split())  # help wraps after hyphens too
    for option in _options(_every_command()[path]):
        _, info = _field(option)
        assert option.flag in text
        assert " ".join((info.description or "").split()[:3]) in text, option.flag
        shown = _shown_default(option, info.get_default(call_default_factory=True))
        if shown is not None:
            assert f"[default: {shown}]" in text, option.flag


@pytest.mark.parametrize(("path", "option"), SETTING_CASES)
def test_flag_env_and_config_each_reach_the_command(
    path: tuple[str, ...], option: SettingOption, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = _every_command()[path]
    seen = _capture(monkeypatch, command)
    base = [*path, *_placeholder_args(command, _options(command))]
    value = _other_value(option, tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(_toml(option, value))

    for how, args in (
        ("flag", [*base, *_flag_args(option, value)]),
        ("env", base),
        ("config", ["--config", str(config), *base]),
    ):
        seen.clear()
        if how == "env":
            monkeypatch.setenv(option.env_var, _env_value(value))
        result = runner.invoke(app, args)
        monkeypatch.delenv(option.env_var, raising=False)
        assert result.exit_code == 0, (how, result.output)
        assert _same(_received(seen, option), value), how

    if option != _options(command)[0]:
        return
    # Priority (checked on each command's first settings flag): a flag beats the environment, which beats
    # the config file.
    _, info = _field(option)
    default = info.get_default(call_default_factory=True)
    seen.clear()
    monkeypatch.setenv(option.env_var, _env_value(value))
    plain = runner.invoke(app, ["--config", str(config), *base])
    assert plain.exit_code == 0, plain.output
    assert _same(_received(seen, option), value)
    if default is not None and not isinstance(default, list):
        seen.clear()
        result = runner.invoke(app, ["--config", str(config), *base, *_flag_args(option, default)])
        assert result.exit_code == 0, result.output
        assert _received(seen, option) == default


def test_help_fits_80_columns_without_cut_flags() -> None:
    for path, command in _every_command().items():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        lines = result.output.splitlines()
        assert all(len(line) <= 80 for line in lines), (path, max(lines, key=len))
        assert "…" not in result.output
        for param in command.params:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("--"):
                    assert flag in result.output, (path, flag)


def test_bad_flag_value_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(tmp_path / "s"), "--workers", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid value for --workers (data.workers = '0'): Input should be greater than or equal to 1"
    ]
    result = runner.invoke(app, ["tokenizer", "train", "--out", str(tmp_path / "t"), "--normalization", "z"])
    assert result.exit_code == 2
    assert (
        "invalid value for --normalization" in result.stderr
        and "'segment', 'lead' or 'percentile'" in result.stderr
    )


# A command of the shape the trainer's will have (many fields of several kinds), on its own app.
probe = new_group()
received: dict[str, Any] = {}


@probe.command()
@settings_options("model", "seed")
def probe_command(name: Annotated[str, typer.Argument()], *, model: ModelSettings, seed: int) -> None:
    received.update(name=name, model=model, seed=seed)


def test_field_kinds_become_working_flags() -> None:
    args = [
        "x",
        "--llm-training", "full",  # Literal
        "--gradient-checkpointing",  # bool
        "--lora-rank", "8",  # int with bounds
        "--lora-dropout", "0.2",  # float with bounds
        "--lora-target-modules", "q_proj", "--lora-target-modules", "v_proj",  # list[str] | None
        "--seed", "3",
    ]  # fmt: skip
    result = runner.invoke(probe, args)
    assert result.exit_code == 0, result.output
    model = received["model"]
    assert (model.llm_training, model.gradient_checkpointing, model.lora_rank) == ("full", True, 8)
    assert (model.lora_dropout, model.lora_target_modules, received["seed"]) == (0.2, ["q_proj", "v_proj"], 3)
    help_text = " ".join(runner.invoke(probe, ["--help"], env={"COLUMNS": "100"}).output.split())
    assert "--gradient-checkpointing / --no-gradient-checkpointing" in help_text
    assert "[frozen|lora|full]" in help_text and "(repeatable)" in help_text
    bad = runner.invoke(probe, ["x", "--lora-rank", "0"])
    assert bad.exit_code != 0 and "--lora-rank" in str(bad.exception)


def test_path_field_becomes_a_path_flag() -> None:
    from ecgbench.commands import _option_annotation

    class WithPath(BaseModel):
        cache: Path | None = Field(None, description="a folder")

    option = SettingOption("g", "cache", "--cache", "cache")
    annotation = _option_annotation(option, WithPath.model_fields["cache"])
    app_ = typer.Typer()
    got: dict[str, Any] = {}

    def main(cache: Any = None) -> None:
        got["cache"] = cache

    main.__annotations__ = {"cache": annotation}  # the option the settings field makes
    app_.command()(main)

    assert runner.invoke(app_, ["--cache", "some/dir"]).exit_code == 0
    assert got["cache"] == Path("some/dir")


def test_flag_clash_is_refused_when_the_command_is_declared() -> None:
    with pytest.raises(TypeError, match="--dtype"):
        settings_options("data.dtype", "data.dtype")
