"""The training loop's exactness: resume after SIGKILL, and accumulation equals the large batch (two
processes equal one: tests/train/test_accelerate_configs.py, which launches the shipped DDP config)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TrainData
from ecgbench.train import run_dir

# Small, fast and deterministic: tiny GPT-2 (the real GPT-2 vocabulary), no dropout in the adapters.
COMMON = [
    "--llm",
    "tiny-gpt2",
    "--max-length",
    "192",
    "--num-workers",
    "0",
    "--log-every",
    "1",
    "--lr",
    "2e-3",
    "--lora-dropout",
    "0",
    "--report-to",
    "none",
    "--deterministic",
]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def _train(data: TrainData, out: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "ecgbench.cli", "train", "end2end", *data.args(), "--out", str(out),
        *COMMON, *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def _losses(out: Path) -> list[tuple[int, str, float]]:
    return [(r["step"], r["split"], r["loss"]) for r in run_dir.read_metrics(out)]


def test_resume_after_sigkill_logs_the_same_losses(train_data: TrainData, tmp_path: Path) -> None:
    # LoRA dropout on: the resumed run must also continue the RNG stream exactly
    steps = [
        "--max-steps", "7", "--batch-size", "4", "--eval-every", "3", "--save-every", "1",
        "--lora-dropout", "0.1",
    ]  # fmt: skip
    whole = _train(train_data, tmp_path / "whole", *steps)
    killed = _train(train_data, tmp_path / "killed", *steps)
    kill_after = random.Random().randint(2, 5)  # any step: the resumed run must not care
    deadline = time.monotonic() + 600
    while not any(step >= kill_after for step, _ in run_dir.checkpoints(tmp_path / "killed")):
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    _finish(whole)
    resume = [
        sys.executable,
        "-m",
        "ecgbench.cli",
        "train",
        "end2end",
        *train_data.args(),
        "--resume",
        str(tmp_path / "killed"),
        *COMMON,
        *steps,
    ]
    resumed = _finish(
        subprocess.Popen(resume, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    assert "resuming" in resumed
    expected = _losses(tmp_path / "whole")
    assert [s for s, split, _ in expected if split == "train"] == list(range(1, 8))
    assert _losses(tmp_path / "killed") == expected  # bit-identical, every step, val included
    state = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert state["status"] == "finished" and state["steps"] == 7


def test_accumulation_equals_the_large_batch(train_data: TrainData, tmp_path: Path) -> None:
    # 4 micro-batches of 2 accumulate to the gradient of one batch of 8: the loss is normalised by the
    # answer tokens of the whole accumulated batch, not averaged per micro-batch.
    base = ["--max-steps", "3", "--eval-every", "3", "--no-group-by-length"]
    large = _train(train_data, tmp_path / "large", *base, "--batch-size", "8", "--grad-accum", "1")
    _finish(large)
    small = _train(train_data, tmp_path / "small", *base, "--batch-size", "2", "--grad-accum", "4")
    _finish(small)
    a, b = _losses(tmp_path / "large"), _losses(tmp_path / "small")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert [x[2] for x in a] == pytest.approx([x[2] for x in b], rel=1e-5, abs=1e-6)
    # and a different split of the same batch is not the same as averaging per micro-batch
    assert len({round(x[2], 3) for x in a if x[1] == "train"}) > 1
