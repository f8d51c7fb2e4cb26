"""Issue 7, the root commands: ``run --set`` refuses a variable the recipe does not have, ``run --help``
keeps ``[vars]`` and ``[[stages]]``, and an ``ECGBENCH_*`` variable is named when it is wrong (a bad value
names the variable, not a flag nobody gave; a misspelt name is refused, not ignored)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app

runner = CliRunner()


def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        f'[vars]\nout = "{tmp_path}/default"\n\n[[stages]]\nname = "show"\n'
        'command = ["config", "show", "--format", "json"]\ncreates = ["{out}/done"]\n'
        '\n[[stages]]\nname = "given"\ncommand = ["config", "show", "--format", "{fmt}"]\n'
    )
    return path


def test_set_of_an_unknown_variable_is_refused(tmp_path):
    result = runner.invoke(app, ["run", str(recipe(tmp_path)), "--set", f"outt={tmp_path}/mine"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "--set outt: recipe" in result.stderr
        and "has no such variable (its variables: fmt, out)" in result.stderr
    )
    assert "config" not in result.stdout  # nothing ran


def test_set_of_a_variable_only_the_stages_use_is_accepted(tmp_path):
    result = runner.invoke(app, ["run", str(recipe(tmp_path)), "--set", "fmt=json", "--dry-run"])
    assert result.exit_code == 0, result.output


def test_run_help_keeps_the_bracketed_names():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "[vars]" in result.output and "[[stages]]" in result.output


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ECGBENCH_TOKENIZER__NUM_MERGES", "0", "invalid value for ECGBENCH_TOKENIZER__NUM_MERGES"),
        ("ECGBENCH_DATA", '{"seg_len": 3}', "invalid value for ECGBENCH_DATA (data.seg_len = 3)"),
        ("ECGBENCH_DATA", '{"bogus": 1}', "unknown setting 'data.bogus' in ECGBENCH_DATA"),
        (
            "ECGBENCH_DATA_TARGET_FS",
            "100",
            "unknown environment variable ECGBENCH_DATA_TARGET_FS (did you mean ECGBENCH_DATA__TARGET_FS?)",
        ),
        ("ECGBENCH_SEEED", "1", "unknown environment variable ECGBENCH_SEEED (did you mean ECGBENCH_SEED?)"),
    ],
)
def test_environment_variables_are_named_in_errors(monkeypatch, tmp_path, name, value, message):
    monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.stderr
    assert not (tmp_path / "s").exists()


def test_a_flag_still_beats_and_names_itself_over_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("ECGBENCH_DATA__SEG_LEN", "1000")
    result = runner.invoke(app, ["data", "prepare", "sample", "--out", str(tmp_path / "s"), "--seg-len", "3"])
    assert result.exit_code == 2 and "invalid value for --seg-len" in result.stderr


def test_config_file_values_are_named_by_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[data]\nseg_len = 3\n")
    result = runner.invoke(app, ["--config", str(config), "config", "show"])
    assert (
        result.exit_code == 2 and f"invalid value for --config {config} (data.seg_len = 3)" in result.stderr
    )


def test_the_dev_scripts_variables_are_not_taken_for_misspelt_settings(monkeypatch):
    # `ECGBENCH_TEST_WORKERS=4 ./dev test` sets it for every command the tests run
    for name in ("ECGBENCH_TEST_WORKERS", "ECGBENCH_VENV", "ECGBENCH_TORCH_VERSION", "ECGBENCH_DEBIAN_CRATES"):
        monkeypatch.setenv(name, "1")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
