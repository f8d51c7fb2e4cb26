"""``ecgbench assets fetch | list`` (and the old ``python -m ecgbench.models.offline_assets`` entry point)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.models import offline_assets

runner = CliRunner()


def test_list_shows_the_fetched_assets() -> None:
    result = runner.invoke(app, ["assets", "list"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for name in offline_assets.asset_groups():
        assert name in result.stdout
    assert "missing" not in result.stdout and "damaged" not in result.stdout


def test_list_names_missing_and_damaged_assets(tmp_path: Path) -> None:
    source = offline_assets.assets_root() / offline_assets.VOCABS["gpt-2"].relpath
    damaged = tmp_path / offline_assets.VOCABS["gpt-2"].relpath
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(source.read_bytes()[:1000])
    result = runner.invoke(app, ["assets", "list", "--dir", str(tmp_path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 2}
    assert "damaged" in rows["vocab gpt-2"] and "missing" in rows["smollm2-135m"]
    assert "run `ecgbench assets fetch`" in result.stdout


def test_fetch_into_an_unusable_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["assets", "fetch", "--dir", str(blocker / "assets"), "--no-smollm2"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot create the asset directory {blocker / 'assets'}: Not a directory"
    ]


def test_the_module_entry_point_runs_the_same_commands(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ecgbench.models.offline_assets", "list", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "missing" in result.stdout and "ecgbench assets fetch" in result.stdout
