"""The root CLI: version, help, and user errors as one line (a traceback with --verbose)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ecgbench import __version__
from ecgbench.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"ecgbench {__version__}"
    assert __version__[0].isdigit()


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--verbose", "--config", str(tmp_path / "absent.toml"), "config", "show"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "config file not found" in result.stderr


def test_no_arguments_prints_help() -> None:
    result = runner.invoke(app, [])
    assert "config" in result.output
    assert "Usage" in result.output


def test_unwritable_output_is_one_line_error(tmp_path: Path) -> None:
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("aabbaabb\n")
    # The output's folder would have to be created inside a regular file.
    args = ["tokenizer", "train", "--symbols", str(symbols), "--out", str(symbols / "t.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "error:" in result.stderr and str(symbols) in result.stderr
    assert "Traceback" not in result.output
