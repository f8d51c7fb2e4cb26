"""Settings resolution: flags > ECGBENCH_* variables > the --config file > defaults, and bad values as one
line naming the flag (seen through `ecgbench config show`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.settings import load_settings

runner = CliRunner()


def test_config_show_resolves_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "exp.toml"
    config.write_text("seed = 7\n[tokenizer]\nnum_merges = 1234\nnormalization = 'segment'\n")
    monkeypatch.setenv("ECGBENCH_TOKENIZER__NUM_MERGES", "99")
    result = runner.invoke(app, ["--config", str(config), "config", "show", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["seed"] == 7
    assert shown["tokenizer"]["normalization"] == "segment"  # from the file
    assert shown["tokenizer"]["num_merges"] == 99  # the environment beats the file


def test_flags_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGBENCH_TOKENIZER__NUM_MERGES", "99")
    settings = load_settings(overrides={"tokenizer": {"num_merges": 5, "normalization": None}})
    assert settings.tokenizer.num_merges == 5
    assert settings.tokenizer.normalization == "lead"  # None means "flag not given"


def test_config_show_toml_round_trips(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0
    written = tmp_path / "defaults.toml"
    written.write_text(result.stdout)
    assert load_settings(written) == load_settings()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        # the variable that was set is named, not the flag nobody gave (issue 7)
        (
            {"env": ("ECGBENCH_TOKENIZER__NUM_MERGES", "many")},
            "invalid value for ECGBENCH_TOKENIZER__NUM_MERGES",
        ),
        ({"env": ("ECGBENCH_TOKENIZER__NORMALIZATION", "zscore")}, "'segment', 'lead' or 'percentile'"),
        ({"env": ("ECGBENCH_TOKENIZER", "{num_merges: 5")}, "expected a JSON object"),
        ({"config": "[tokenizer]\nnum_merges = 0\n"}, "greater than or equal to 1"),
        ({"config": "[tokenizer\nnum_merges = 3\n"}, "is not valid TOML"),
        ({"config": "[tokenizer]\nnum_merge = 3\n"}, "unknown setting 'tokenizer.num_merge'"),
        ({"config": "[tokenizer]\npercentile_low = 60.0\npercentile_high = 55.0\n"}, "percentile_low"),
        ({"missing_config": True}, "config file not found"),
    ],
)
def test_bad_settings_give_one_line_error(
    setup: dict, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = []
    if "env" in setup:
        monkeypatch.setenv(*setup["env"])
    if "config" in setup:
        path = tmp_path / "bad.toml"
        path.write_text(setup["config"])
        args = ["--config", str(path)]
    if "missing_config" in setup:
        args = ["--config", str(tmp_path / "absent.toml")]
    result = runner.invoke(app, [*args, "config", "show"])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
