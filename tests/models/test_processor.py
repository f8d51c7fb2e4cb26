"""The weight-free ELM processor: pickling, spawned DataLoader workers, loading from a checkpoint without the
LLM, and padding. Real PTB-XL ECGs and ECG-QA questions (elm_helpers), and the prepared sample store."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from elm_helpers import conversations, make_elm

from ecgbench.data.dataset import ConversationDataset
from ecgbench.models.chat import IGNORE_INDEX
from ecgbench.models.checkpoint import load_processor, save_elm
from ecgbench.models.processor import ELMProcessor

MAX_LENGTH = 256
VARIANTS = ["token", "encoder-signal"]  # ECG-Byte ids in the input / soft tokens from an encoder


def _examples(processor: ELMProcessor) -> list[dict[str, Any]]:
    """A training example and a generation prompt of every helper conversation."""
    out = []
    for turns, ecgs in conversations():
        out.append(processor.prepare_example(turns, ecgs, max_length=MAX_LENGTH))
        asked = turns[0]["content"].count("<ecg>")
        out.append(processor.prepare_prompt(turns[:1], ecgs[:asked], max_length=MAX_LENGTH))
    return out


def _assert_same_examples(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "ecg":
                assert (a[key] is None) == (b[key] is None)
                if a[key] is not None:
                    assert torch.equal(a[key], b[key])
            else:
                assert a[key] == b[key]


def _refuse_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building any torch module, or loading any causal LM, fail."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", refuse)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pickled_processor_builds_identical_examples(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    elm = make_elm(variant)
    blob = pickle.dumps(elm.processor)
    with monkeypatch.context() as patched:
        _refuse_modules(patched)
        clone = pickle.loads(blob)  # what a spawned worker receives: no weights, no module
    assert not any(isinstance(value, torch.nn.Module) for value in vars(clone).values())
    assert clone.first_new_id == elm.first_new_id and clone.num_new_tokens == elm.num_new_tokens
    _assert_same_examples(_examples(clone), _examples(elm.processor))


@pytest.mark.parametrize("variant", VARIANTS)
def test_from_checkpoint_builds_the_live_examples_without_the_llm(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elm = make_elm(variant)
    save_elm(elm, tmp_path / "ckpt")
    with monkeypatch.context() as patched:
        _refuse_modules(patched)
        processor = load_processor(tmp_path / "ckpt")
    assert processor.config == elm.config and processor.family == elm.family
    assert processor.soft_tokens_per_ecg == elm.soft_tokens_per_ecg
    _assert_same_examples(_examples(processor), _examples(elm.processor))


class _TrainingExamples(torch.utils.data.Dataset):
    """Conversation i of the data path -> a training example (module level: spawned workers import it)."""

    def __init__(self, conversations: ConversationDataset, processor: ELMProcessor):
        self.conversations = conversations
        self.processor = processor

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.conversations[i]
        return self.processor.prepare_example(item.turns, item.ecgs, max_length=MAX_LENGTH)


def test_spawned_dataloader_worker_gives_the_in_process_batches(sample_store: Path, split_dir: Path) -> None:
    # The real data path: the sample store's labels set, its ECGs tokenized by ECG-Byte in the worker.
    elm = make_elm("token", signal_length=1250, fs=250.0)
    dataset = _TrainingExamples(
        ConversationDataset([split_dir / "labels.parquet"], [sample_store], split="val"), elm.processor
    )

    def batches(**kwargs: Any) -> list[dict[str, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=4, collate_fn=elm.processor.collate, **kwargs
        )
        return list(loader)

    in_process = batches()
    spawned = batches(num_workers=1, multiprocessing_context="spawn")
    assert len(spawned) == len(in_process) == 4
    for a, b in zip(spawned, in_process, strict=True):
        assert a.keys() == b.keys() == {"input_ids", "labels", "attention_mask"}
        assert all(torch.equal(a[key], b[key]) for key in a)
    first = in_process[0]["input_ids"][0]
    assert int((first >= elm.first_new_id).sum()) >= 64  # the ECG-Byte run is in the example


@pytest.mark.parametrize("variant", VARIANTS)
def test_collate_pads_right_to_train_and_left_to_generate(variant: str) -> None:
    processor = make_elm(variant).processor
    convs = conversations()
    examples = [processor.prepare_example(t, e, max_length=MAX_LENGTH) for t, e in convs]
    prompts = [processor.prepare_prompt(t[:1], e[: t[0]["content"].count("<ecg>")]) for t, e in convs]
    pad = processor.pad_token_id
    asked = [ecgs[: t[0]["content"].count("<ecg>")] for t, ecgs in convs]
    for rows, side, ecgs in ((examples, "right", [e for _, c in convs for e in c]),
                             (prompts, "left", [e for c in asked for e in c])):  # fmt: skip
        lengths = [len(r["input_ids"]) for r in rows]
        assert len(set(lengths)) > 1  # padding is exercised
        batch = processor.collate(rows, side)
        width = max(lengths)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(rows), width)
        assert ("labels" in batch) == (side == "right")
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            real = slice(0, n) if side == "right" else slice(width - n, width)
            padding = slice(n, width) if side == "right" else slice(0, width - n)
            assert batch["input_ids"][i, real].tolist() == row["input_ids"]
            assert batch["attention_mask"][i, real].tolist() == [1] * n
            assert batch["input_ids"][i, padding].tolist() == [pad] * (width - n)
            assert batch["attention_mask"][i, padding].tolist() == [0] * (width - n)
            if side == "right":
                assert batch["labels"][i, real].tolist() == row["labels"]
                assert batch["labels"][i, padding].tolist() == [IGNORE_INDEX] * (width - n)
        if variant == "token":
            assert "ecg" not in batch
        else:  # every ECG of the batch in conversation order, with the row it belongs to
            counts = [0 if r["ecg"] is None else len(r["ecg"]) for r in rows]
            assert batch["ecg_owner"].tolist() == [i for i, c in enumerate(counts) for _ in range(c)]
            assert torch.equal(batch["ecg"], processor.representation_of(np.stack(ecgs)))
