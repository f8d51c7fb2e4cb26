"""Training inputs on the bundled real sample: labels conversations split by patient, a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@dataclass(frozen=True)
class TrainData:
    store: Path
    sets: Path  # the labels set with its split column filled by `data split`
    splits: Path
    tokenizer: Path

    def args(self, *, tokenizer: bool = True) -> list[str]:
        out = ["--store", str(self.store), "--sets", str(self.sets)]
        return [*out, "--tokenizer", str(self.tokenizer)] if tokenizer else out


@pytest.fixture(scope="session")
def train_data(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainData:
    root = tmp_path_factory.mktemp("train_data")
    invoke("data", "map", "labels", "--store", sample_store, "--out", root / "sets")
    invoke(
        "data", "split", "--store", sample_store, "--sets", root / "sets" / "labels.parquet",
        "--out", root / "split", "--folds", "5",
    )
    invoke(
        "tokenizer", "train", "--store", sample_store, "--splits", root / "split" / "splits.parquet",
        "--split", "train", "--num-merges", "300", "--out", root / "tokenizer.json",
    )
    return TrainData(
        store=sample_store,
        sets=root / "split" / "labels.parquet",
        splits=root / "split" / "splits.parquet",
        tokenizer=root / "tokenizer.json",
    )
