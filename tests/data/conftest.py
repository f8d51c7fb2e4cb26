"""Fixtures of the data tests."""

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
