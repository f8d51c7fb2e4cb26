"""Helpers of the demo tests: the served pages, and the answers a model gives through the ELM API."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgbench.demo.feedback import read_feedback
from ecgbench.resources import SAMPLE_DIR

PTBXL = SAMPLE_DIR / "ptbxl" / "records100" / "00000" / "00001_lr"  # PTB-XL record 1, 100 Hz, 10 s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Runs:
    store: Path
    end2end: Path  # token ELM (ECG-Byte)
    encoder_free: Path  # encoder-free ELM on the signal


@dataclass
class Served:
    """A demo page being served: the app behind it, its URL and its feedback log."""

    app: Any
    url: str
    feedback: Path


def expected_answer(
    served: Served, slot: str, turns: list[dict[str, str]], ecg: np.ndarray, **decoding: Any
) -> str:
    """The answer of the model in ``slot`` through the documented ELM path (processor, collate, generate),
    with the page's max new tokens (6) and longest prompt (256)."""
    model = next(m for m in served.app.models if m.slot == slot)
    elm = model.elm
    prompt = elm.processor.prepare_prompt(turns, [ecg], max_length=256)
    with model.lock:
        if decoding.get("do_sample"):
            torch.manual_seed(decoding.pop("seed"))
        return elm.generate(elm.processor.collate([prompt], "left"), max_new_tokens=6, **decoding)[0]


def shown(answer: str) -> str:
    """An answer as the chat shows it."""
    return answer or "(empty answer)"


def feedback_lines(served: Served) -> list[dict[str, Any]]:
    if not served.feedback.is_file():
        return []
    records, damaged = read_feedback(served.feedback)
    assert damaged == []
    return records
