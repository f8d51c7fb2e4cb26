"""Batched generation over a conversation set: every assistant turn answered with the gold history.

Decoding is explicit and recorded in every line: greedy unless sampling is asked for, never a model's
own ``generation_config`` defaults. ``ecg_mode`` replaces the ECG to measure how much a model reads it:

- ``real``: the conversation's own ECGs;
- ``zeros``: flat lines of the same shape;
- ``noise``: Gaussian noise with each lead's own standard deviation;
- ``shuffled``: the ECGs of another conversation of the same split (a seeded derangement);
- ``none``: no ECG at all (the ``<ecg>`` placeholders are removed from the question).

``predictions.jsonl`` is appended item by item (one process each under ``accelerate launch``:
``predictions.part-<rank>.jsonl``, joined at the end), so a killed run resumes without generating a
finished item again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ecgbench.data.conversations import ECG_PLACEHOLDER
from ecgbench.data.dataset import ConversationDataset, ConversationItem
from ecgbench.errors import UserError
from ecgbench.files import atomic_write

EcgMode = Literal["real", "zeros", "noise", "shuffled", "none"]
ECG_MODES: tuple[str, ...] = ("real", "zeros", "noise", "shuffled", "none")
PREDICTIONS_FILE = "predictions.jsonl"


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded; written into every prediction."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        if not self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }

    def record(self) -> dict[str, Any]:
        return {
            "strategy": "sample" if self.do_sample else "greedy",
            **self.generate_kwargs(),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Question:
    """One assistant turn to answer: the conversation's position and the turn's index."""

    index: int  # position in the dataset
    turn: int  # index of the assistant turn in the conversation's turns


def questions(dataset: ConversationDataset) -> list[Question]:
    out = []
    for i in range(len(dataset)):
        turns = dataset.turns(i)
        out += [Question(i, k) for k, t in enumerate(turns) if t["role"] == "assistant"]
    if not out:
        raise UserError("the conversations hold no assistant turn to answer")
    return out


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation with no fixed point (each conversation gets another one's ECGs)."""
    if n < 2:
        raise UserError("--ecg shuffled needs at least two conversations in the split")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def replace_ecgs(
    mode: str,
    turns: list[dict[str, str]],
    ecgs: list[np.ndarray],
    *,
    other: list[np.ndarray] | None,
    rng: np.random.Generator,
) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    """The turns and ECGs a model sees under ``mode`` (see the module notes)."""
    if mode == "real":
        return turns, ecgs
    if mode == "zeros":
        return turns, [np.zeros_like(e) for e in ecgs]
    if mode == "noise":
        return turns, [
            (rng.standard_normal(e.shape) * e.std(axis=1, keepdims=True)).astype(np.float32) for e in ecgs
        ]
    if mode == "shuffled":
        assert other is not None
        if len(other) < len(ecgs):  # another conversation with fewer ECGs: reuse its last one
            other = other + [other[-1]] * (len(ecgs) - len(other))
        return turns, [o.copy() for o in other[: len(ecgs)]]
    if mode == "none":
        stripped = [
            {**t, "content": " ".join(t["content"].replace(ECG_PLACEHOLDER, " ").split())}
            if t["role"] == "user"
            else t
            for t in turns
        ]
        return stripped, []
    raise UserError(f"invalid value for --ecg: {mode!r} (allowed: {', '.join(ECG_MODES)})")


def prediction_row(
    item: ConversationItem, turn: int, ecg_mode: str, decoding: dict[str, Any], checkpoint_id: str
) -> dict[str, Any]:
    """The fields of one prediction line but the prediction itself (shared with the baselines)."""
    return {
        "conversation_id": item.conversation_id,
        "turn": turn,
        "source": item.source,
        "question_type": item.question_type,
        "answer_options": item.answer_options,
        "question": item.turns[turn - 1]["content"],
        "reference": item.turns[turn]["content"],
        "ecg_refs": [[r.corpus, r.record_id] for r in item.ecg_refs],
        "ecg_mode": ecg_mode,
        "decoding": decoding,
        "checkpoint": checkpoint_id,
    }


def _read_done(paths: Sequence[Path]) -> dict[tuple[str, int], dict[str, Any]]:
    done: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # the line a kill cut short: generated again
            done[(row["conversation_id"], row["turn"])] = row
    return done


def _rewrite_complete(path: Path, rows: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write(path, lambda tmp: tmp.write_text(body, encoding="utf-8"))


def merge_lora(elm: Any) -> bool:
    """Fold the LLM's LoRA adapters into its weights for generation (one matrix product per projection and
    no adapter bookkeeping at every new token). Only for float32 weights: a half-precision sum would round
    most of the small LoRA update away. Returns whether it merged."""
    import torch
    from peft import PeftModel

    if not isinstance(elm.llm, PeftModel) or next(elm.llm.parameters()).dtype != torch.float32:
        return False
    elm.llm = elm.llm.merge_and_unload()
    return True


def share(total: int, rank: int, processes: int) -> int:
    """Questions process ``rank`` answers (every processes-th, starting at its rank)."""
    return (total - rank + processes - 1) // processes


def generate_predictions(
    elm: Any,
    dataset: ConversationDataset,
    out: Path,
    *,
    ecg_mode: str = "real",
    decoding: Decoding = Decoding(),
    batch_size: int = 8,
    max_length: int | None = None,
    system: str | None = None,
    checkpoint_id: str = "",
    rank: int = 0,
    processes: int = 1,
    progress: Any = None,
) -> Path:
    """Answer every assistant turn of ``dataset`` (this process's share) into ``out``'s part file."""
    import torch

    if ecg_mode not in ECG_MODES:
        raise UserError(f"invalid value for --ecg: {ecg_mode!r} (allowed: {', '.join(ECG_MODES)})")
    out.mkdir(parents=True, exist_ok=True)
    part = out / (PREDICTIONS_FILE if processes == 1 else f"predictions.part-{rank}.jsonl")
    done = _read_done([part])
    expected = {"checkpoint": checkpoint_id, "decoding": decoding.record(), "ecg_mode": ecg_mode}
    for row in done.values():  # resume only the same run: one file must never mix two
        wrong = next((k for k, v in expected.items() if row.get(k) != v), None)
        if wrong is not None:
            raise UserError(
                f"{part} holds answers with another {wrong} ({row.get(wrong)!r}; this run: "
                f"{expected[wrong]!r}): give another --out, or delete the file to answer again"
            )
    _rewrite_complete(part, list(done.values()))  # drop a cut last line before appending
    asked = questions(dataset)
    shuffled = derangement(len(dataset), decoding.seed) if ecg_mode == "shuffled" else None
    mine = asked[rank::processes]
    todo = [q for q in mine if (dataset.conversation_id(q.index), q.turn) not in done]
    if progress is not None and len(mine) > len(todo):
        progress(len(mine) - len(todo))  # answered by an earlier, interrupted run
    processor = elm.processor
    prepared: list[tuple[Question, dict[str, Any], dict[str, Any]]] = []

    def flush(handle: Any) -> None:
        if not prepared:
            return
        if decoding.do_sample:
            torch.manual_seed(decoding.seed + prepared[0][0].index)
        batch = processor.collate([p for _, p, _ in prepared], "left")
        answers = elm.generate(batch, **decoding.generate_kwargs())
        for (_, _, row), answer in zip(prepared, answers, strict=True):
            handle.write(json.dumps({**row, "prediction": answer}, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        if progress is not None:
            progress(len(prepared))
        prepared.clear()

    # Longest prompts first within the run: similar lengths share a batch (less padding).
    order = sorted(todo, key=lambda q: -len(dataset.turns(q.index)[q.turn - 1]["content"]))
    with open(part, "a", encoding="utf-8") as handle:
        for q in order:
            item = dataset[q.index]
            rng = np.random.default_rng([decoding.seed, q.index])
            other = dataset.ecgs(int(shuffled[q.index])) if shuffled is not None else None
            turns, ecgs = replace_ecgs(ecg_mode, item.turns, item.ecgs, other=other, rng=rng)
            history = turns[: q.turn]
            n_ecgs = sum(t["content"].count(ECG_PLACEHOLDER) for t in history if t["role"] == "user")
            prompt = processor.prepare_prompt(
                history, ecgs[:n_ecgs], max_length=max_length, system=system, refs=item.ecg_refs
            )
            row = prediction_row(item, q.turn, ecg_mode, decoding.record(), checkpoint_id)
            prepared.append((q, prompt, row))
            if len(prepared) == batch_size:
                flush(handle)
        flush(handle)
    return part


def join_parts(out: Path, processes: int, order: Iterator[tuple[str, int]] | list[tuple[str, int]]) -> Path:
    """Merge the processes' part files into ``predictions.jsonl`` in question order, once each."""
    parts = [out / f"predictions.part-{r}.jsonl" for r in range(processes)]
    done = _read_done(parts)
    rows = [done[key] for key in order if key in done]
    _rewrite_complete(out / PREDICTIONS_FILE, rows)
    for p in parts:
        p.unlink(missing_ok=True)
    return out / PREDICTIONS_FILE


def sorted_predictions(out: Path, order: list[tuple[str, int]]) -> Path:
    """Rewrite ``predictions.jsonl`` in question order (generation ran longest first)."""
    path = out / PREDICTIONS_FILE
    done = _read_done([path])
    _rewrite_complete(path, [done[key] for key in order if key in done])
    return path
