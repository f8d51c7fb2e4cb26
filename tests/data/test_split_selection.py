"""Selecting one split's segments: `data sample` and `tokenizer train/inspect` with --splits/--split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.splits import read_record_splits, segments_in_split
from ecgbench.data.store import SegmentStore

runner = CliRunner()


@pytest.fixture(scope="module")
def split_store(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("splits")
    result = runner.invoke(
        app, ["data", "split", "--store", str(sample_store), "--out", str(out), "--folds", "4"]
    )
    assert result.exit_code == 0, result.output
    return sample_store, out / "splits.parquet"


def _split_of_segments(store: SegmentStore, splits_path: Path, ids: np.ndarray) -> set[str]:
    lookup = {
        (c, r): s
        for c, r, s in zip(
            *(
                read_record_splits(splits_path).column(k).to_pylist()
                for k in ("corpus", "record_id", "split")
            ),
            strict=True,
        )
    }
    index = store.index
    return {lookup[(index.column("corpus")[i].as_py(), index.column("record_id")[i].as_py())] for i in ids}


def test_segments_in_split_partition_the_store(split_store: tuple[Path, Path]) -> None:
    store_path, splits_path = split_store
    store = SegmentStore.open(store_path)
    record_splits = read_record_splits(splits_path)
    parts = {name: segments_in_split(store.index, record_splits, name) for name in ("train", "val", "test")}
    together = np.sort(np.concatenate(list(parts.values())))
    assert np.array_equal(together, np.arange(len(store)))  # every segment once, no overlap
    for name, ids in parts.items():
        assert _split_of_segments(store, splits_path, ids) == {name}


def test_sample_draws_only_from_the_split(split_store: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, splits_path = split_store
    out = tmp_path / "sample.parquet"
    args = ["data", "sample", "--store", str(store_path), "--out", str(out), "--sample-size", "10"]
    result = runner.invoke(
        app, [*args, "--sample-method", "random", "--splits", str(splits_path), "--split", "train"]
    )
    assert result.exit_code == 0, result.output
    ids = pq.read_table(out).column("segment_id").to_numpy()
    assert len(ids) == 10
    assert _split_of_segments(SegmentStore.open(store_path), splits_path, ids) == {"train"}


def test_tokenizer_trains_on_train_and_inspects_test(split_store: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, splits_path = split_store
    tok = tmp_path / "tokenizer.json"
    select = ["--store", str(store_path), "--splits", str(splits_path)]
    result = runner.invoke(
        app, ["tokenizer", "train", *select, "--split", "train", "--num-merges", "50", "--out", str(tok)]
    )
    assert result.exit_code == 0, result.output
    store = SegmentStore.open(store_path)
    n_train = len(segments_in_split(store.index, read_record_splits(splits_path), "train"))
    assert json.loads(tok.read_text())["training"]["segments"] == n_train
    result = runner.invoke(app, ["tokenizer", "inspect", str(tok), *select, "--split", "test"])
    assert result.exit_code == 0, result.output
    held_out = json.loads(result.stdout)["held_out"]
    assert held_out["split"] == "test"
    assert held_out["segments"] == len(
        segments_in_split(store.index, read_record_splits(splits_path), "test")
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "train"], "--splits and --split go together"),
        (["--splits", "SPLITS", "--split", "holdout"], "invalid value for --split"),
        (["--splits", "MISSING", "--split", "train"], "splits file not found"),
    ],
)
def test_bad_split_selection(
    split_store: tuple[Path, Path], tmp_path: Path, extra: list[str], message: str
) -> None:
    store_path, splits_path = split_store
    extra = [
        str(splits_path) if a == "SPLITS" else str(tmp_path / "none.parquet") if a == "MISSING" else a
        for a in extra
    ]
    result = runner.invoke(
        app, ["data", "sample", "--store", str(store_path), "--out", str(tmp_path / "s.parquet"), *extra]
    )
    assert result.exit_code == 2
    assert message in result.stderr
