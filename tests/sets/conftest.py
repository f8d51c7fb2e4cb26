"""Fixtures of the conversation-set tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def write_json(tmp_path: Path):
    def write(name: str, data) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled real sample prepared into a segment store by `ecgbench data prepare sample`."""
    from typer.testing import CliRunner

    from ecgbench.cli import app

    out = tmp_path_factory.mktemp("store") / "sample"
    result = CliRunner().invoke(app, ["data", "prepare", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
