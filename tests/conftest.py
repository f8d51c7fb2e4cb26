from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub; fail fast instead of hanging on a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _no_ecgbench_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ECGBENCH_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("ECGBENCH_") and name != "ECGBENCH_ASSETS":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled real sample prepared into a segment store by `ecgbench data prepare sample` (its folder;
    open it with ``SegmentStore.open``). Shared by the data, train and infer tests; do not write into it."""
    from typer.testing import CliRunner

    from ecgbench.cli import app

    out = tmp_path_factory.mktemp("store") / "sample"
    result = CliRunner().invoke(app, ["data", "prepare", "sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _invoke_ok(*args: str) -> None:
    from typer.testing import CliRunner

    from ecgbench.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def labels_set(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `labels` conversation set of the sample store (`ecgbench data map labels`, default 4 questions
    per record, seed 0), without splits: its ``labels.parquet``. Shared; do not write into its folder."""
    out = tmp_path_factory.mktemp("sets")
    _invoke_ok("data", "map", "labels", "--store", str(sample_store), "--out", str(out))
    return out / "labels.parquet"


@pytest.fixture(scope="session")
def split_dir(sample_store: Path, labels_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ecgbench data split --folds 5` of the sample store and :func:`labels_set`: the folder holding
    ``splits.parquet`` (records -> fold, split) and ``labels.parquet`` (the set with ``split``/``fold``
    filled). Shared; do not write into it."""
    out = tmp_path_factory.mktemp("split")
    _invoke_ok("data", "split", "--store", str(sample_store), "--sets", str(labels_set), "--out", str(out),
               "--folds", "5")  # fmt: skip
    return out
