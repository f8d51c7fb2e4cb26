"""Two trained ELMs for the demo tests and the demo pages serving them.

The runs are real `ecgbench train` runs on the bundled sample (labels conversations split by patient, as in
tests/train): an end-to-end ECG-Byte ELM and an encoder-free signal ELM, 2 steps each with tiny GPT-2. The
pages run on 127.0.0.1 on a free port and are stopped when the tests end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from demo_helpers import Runs, Served, free_port
from typer.testing import CliRunner

from ecgbench.cli import app as cli_app

FAST = [
    "--llm", "tiny-gpt2", "--max-length", "256", "--batch-size", "4", "--num-workers", "0",
    "--report-to", "none", "--eval-every", "2", "--max-steps", "2", "--val-max-conversations", "4",
]  # fmt: skip


def invoke(*args: object) -> str:
    result = CliRunner().invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def runs(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("demo_runs")
    invoke("data", "map", "labels", "--store", sample_store, "--out", root / "sets")
    invoke(
        "data", "split", "--store", sample_store, "--sets", root / "sets" / "labels.parquet",
        "--out", root / "split", "--folds", "5",
    )  # fmt: skip
    invoke(
        "tokenizer", "train", "--store", sample_store, "--splits", root / "split" / "splits.parquet",
        "--split", "train", "--num-merges", "300", "--out", root / "tokenizer.json",
    )  # fmt: skip
    data = [
        "--store", sample_store, "--sets", root / "split" / "labels.parquet",
        "--splits", root / "split" / "splits.parquet",
    ]  # fmt: skip
    invoke("train", "end2end", *data, "--tokenizer", root / "tokenizer.json", *FAST, "--out", root / "e2e")
    invoke("train", "encoder-free", *data, "--num-soft-tokens", "8", *FAST, "--out", root / "ef")
    return Runs(sample_store, root / "e2e", root / "ef")


def _serve(models: list, feedback: Path) -> Iterator[Served]:
    from ecgbench.demo.app import DemoApp, launch
    from ecgbench.demo.feedback import FeedbackLog
    from ecgbench.infer.generate import Decoding

    demo = DemoApp(models, FeedbackLog(feedback), decoding=Decoding(max_new_tokens=6), max_upload_mb=1)
    blocks = demo.build()
    url = launch(blocks, host="127.0.0.1", port=free_port(), block=False, quiet=True, max_upload_mb=1)
    try:
        yield Served(demo, url, feedback)
    finally:
        blocks.close()
        demo.close()


@pytest.fixture(scope="session")
def side_by_side(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Model A: the end-to-end run, model B: the encoder-free run."""
    from ecgbench.demo.app import load_demo_model

    models = [load_demo_model(runs.end2end, "a"), load_demo_model(runs.encoder_free, "b")]
    yield from _serve(models, tmp_path_factory.mktemp("pairs") / "feedback.jsonl")


@pytest.fixture(scope="session")
def single(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One model: the encoder-free run."""
    from ecgbench.demo.app import load_demo_model

    yield from _serve(
        [load_demo_model(runs.encoder_free, "a")], tmp_path_factory.mktemp("ratings") / "feedback.jsonl"
    )
