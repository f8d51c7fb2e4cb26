"""End-to-end (ECG-Byte token ELM) training throughput: our trainer beside the peer's data path, and
beside a plain causal-LM training step of the same LLM on the same token batches.

    python bench/bench_train.py [--quick] [--llm tiny-llama --llm smollm2-135m-offline] [--steps 6]

Input: the bundled sample prepared into a segment store (`data prepare sample`: 5 s at 250 Hz), its labels
conversations (`data map labels`, train split of `data split --folds 5`) and an ECG-Byte tokenizer trained
on the store (`tokenizer train`). Every conversation is one ECG and one question; its ECG-Byte run
(about 2,000-4,000 tokens) is longer than the 1024-token budget of both ways, so it is cut to fit.

For each LLM (LoRA r=16 on the attention and MLP projections, AdamW, gradient clipping at 1.0), tokens per
second (non-padding tokens through forward, backward and the optimizer step; the fastest timed update
after a warm-up update, over rounds that run the three ways in turn, in swapped order each round) of

- ours: ``train_elm`` itself (what `ecgbench train end2end` runs) -- the processor builds examples in
  DataLoader worker processes (Rust ECG-Byte encoding, ECG run cut to fit), batches grouped by length and
  padded to their longest, the ECG rows in the ELM's own table; its metrics.jsonl ``tokens_per_s``;
- plain: the same LLM with its vocabulary resized for the ECG tokens, ``model(input_ids, labels)`` on
  exactly our batches, already collated in memory (no data path at all): the ceiling for ours;
- peer (ECG-Bench's end-to-end path as it is described, re-implemented here; its code is not used): per
  conversation, in the main process, one min/max over all leads, symbols, greedy longest-match encoding
  with the vocabulary's prefix table rebuilt on every call, the answer span found by searching its
  tokens, cut and padded to 1024; batches of 2 (its scripts' batch per device for the 1B models); the
  same resized LLM as plain.

Goals: ours >= 3x the peer, ours >= 0.85x plain. Plain and peer train only the LoRA adapters (the resized
embedding stays frozen); ours also trains its new ECG rows, which is slightly more work.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.dataset import ConversationDataset
from ecgbench.models.chat import IGNORE_INDEX
from ecgbench.models.config import ELMConfig, ModelSettings
from ecgbench.models.elm import ELM, build_elm
from ecgbench.settings import TrainSettings
from ecgbench.tokenizer import ECGByteTokenizer
from ecgbench.train import run_dir
from ecgbench.train.loop import BatchStream, Collator, ExampleDataset, TrainInputs, train_elm

MAX_LENGTH = 1024  # the peer's pad_to_max
PEER_BATCH = 2
SEED = 0


# ------------------------------------------------------------------------------------------- inputs


def prepare_inputs(root: Path) -> dict[str, Path]:
    runner = CliRunner()

    def run(*args: Any) -> None:
        result = runner.invoke(app, [str(a) for a in args])
        if result.exit_code != 0:
            raise SystemExit(result.output)

    run("data", "prepare", "sample", "--out", root / "store")
    run("data", "map", "labels", "--store", root / "store", "--out", root / "sets")
    run("data", "split", "--store", root / "store", "--sets", root / "sets" / "labels.parquet",
        "--out", root / "split", "--folds", "5")  # fmt: skip
    run("tokenizer", "train", "--store", root / "store", "--splits", root / "split" / "splits.parquet",
        "--split", "train", "--out", root / "tokenizer.json")  # fmt: skip
    return {
        "store": root / "store",
        "sets": root / "split" / "labels.parquet",
        "tokenizer": root / "tokenizer.json",
    }


def settings(llm: str, batch_size: int, steps: int, workers: int) -> tuple[ModelSettings, TrainSettings]:
    model = ModelSettings(llm=llm, llm_training="lora")
    train = TrainSettings(
        max_steps=steps,
        batch_size=batch_size,
        max_length=MAX_LENGTH,
        num_workers=workers,
        log_every=1,
        eval_every=10**6,  # one evaluation, after the last update (outside the timed windows)
        val_max_conversations=2,
        report_to="none",
        lr=1e-4,
    )
    return model, train


# --------------------------------------------------------------------------------------------- ours


def ours(
    inputs: dict[str, Path], llm: str, batch_size: int, steps: int, workers: int, out: Path
) -> list[float]:
    model, train = settings(llm, batch_size, steps, workers)
    train_elm(
        TrainInputs(
            paradigm="end2end",
            stores=[inputs["store"]],
            sets=[inputs["sets"]],
            out=out,
            tokenizer=inputs["tokenizer"],
        ),
        model,
        train,
        SEED,
    )
    return [row["tokens_per_s"] for row in run_dir.read_metrics(out) if row["split"] == "train"]


def our_batches(elm: ELM, inputs: dict[str, Path], train: TrainSettings, steps: int) -> list[dict[str, Any]]:
    """The batches our trainer drew in its run (same seed, same length grouping), collated."""
    conversations = ConversationDataset([inputs["sets"]], [inputs["store"]], split="train", seed=SEED)
    examples = ExampleDataset(conversations, elm.processor, train.max_length, None)
    stream = BatchStream(
        conversations.length_proxy(elm.config.signal_length * 12 / 4.0),
        batch_size=train.batch_size,
        grad_accum=1,
        processes=1,
        rank=0,
        seed=SEED,
        group_by_length=True,
        start=0,
        updates=steps,
    )
    collate = Collator(elm.processor)
    return [collate([examples[i] for i in indices]) for indices in stream]


# ------------------------------------------------------------------------------------- plain / peer


def resized_llm(elm: ELM) -> Any:
    """The ELM's LLM (same LoRA init) with the ECG tokens appended to its own vocabulary."""
    model = copy.deepcopy(elm.llm)
    model.resize_token_embeddings(elm.first_new_id + elm.num_new_tokens, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[elm.first_new_id :] = elm.ecg_embeddings.weight  # type: ignore[union-attr]
    model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    return model


def train_step(model: Any, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    loss = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def optimizer_of(model: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)


def plain(elm: ELM, batches: list[dict[str, Any]]) -> list[float]:
    model = resized_llm(elm)
    optimizer = optimizer_of(model)
    rates = []
    for batch in batches:
        start = time.perf_counter()
        train_step(model, optimizer, batch)
        rates.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - start))
    return rates


class PeerExamples:
    """ECG-Bench's end-to-end examples, built one by one in the main process (see the module notes)."""

    def __init__(self, elm: ELM, tokenizer: ECGByteTokenizer):
        self.elm = elm
        self.vocab = tokenizer.token_strings
        self.llm_tokenizer = elm.tokenizer

    def encode(self, text: str) -> list[int]:
        by_string = {s: i for i, s in enumerate(self.vocab)}  # rebuilt on every call, as the peer does
        prefixes = {s[:k] for s in by_string for k in range(1, len(s) + 1)}
        ids, i = [], 0
        while i < len(text):
            j, best = i + 1, i + 1
            while j <= len(text) and text[i:j] in prefixes:
                if text[i:j] in by_string:
                    best = j
                j += 1
            ids.append(by_string[text[i:best]])
            i = best
        return ids

    def example(self, turns: list[dict[str, str]], signal: np.ndarray) -> dict[str, list[int]]:
        low, high = float(signal.min()), float(signal.max())  # one min/max for all twelve leads
        codes = np.clip(np.round((signal - low) / max(high - low, 1e-6) * 25), 0, 25).astype(np.uint8)
        ecg = [self.elm.first_new_id + i for i in self.encode((codes.reshape(-1) + 97).tobytes().decode())]
        text = self.llm_tokenizer.apply_chat_template(turns, tokenize=False)
        before, after = text.split("<ecg>", 1)
        head = self.llm_tokenizer(before, add_special_tokens=False)["input_ids"]
        tail = self.llm_tokenizer(after, add_special_tokens=False)["input_ids"]
        ids = head + ecg[: max(0, MAX_LENGTH - len(head) - len(tail))] + tail
        answer = self.llm_tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"]
        labels = [IGNORE_INDEX] * len(ids)
        for start in range(len(ids) - len(answer), -1, -1):  # the answer found by searching for its tokens
            if ids[start : start + len(answer)] == answer:
                labels[start : start + len(answer)] = answer
                break
        pad = MAX_LENGTH - len(ids)
        return {
            "input_ids": ids + [self.elm.pad_token_id] * pad,
            "attention_mask": [1] * len(ids) + [0] * pad,
            "labels": labels + [IGNORE_INDEX] * pad,
        }


def peer(elm: ELM, inputs: dict[str, Path], tokenizer: ECGByteTokenizer, steps: int) -> list[float]:
    model = resized_llm(elm)
    optimizer = optimizer_of(model)
    conversations = ConversationDataset([inputs["sets"]], [inputs["store"]], split="train", seed=SEED)
    order = np.random.default_rng(SEED).permutation(len(conversations))
    examples = PeerExamples(elm, tokenizer)
    rates = []
    for step in range(steps):
        start = time.perf_counter()
        rows = []
        for i in order[step * PEER_BATCH : (step + 1) * PEER_BATCH]:
            item = conversations[int(i)]
            rows.append(examples.example(item.turns, item.ecgs[0]))
        batch = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
        train_step(model, optimizer, batch)
        rates.append(int(batch["attention_mask"].sum()) / (time.perf_counter() - start))
    return rates


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--llm", action="append", help="LLMs to train (default: tiny-llama, smollm2-135m-offline)"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed optimizer updates of each way, each round"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the ways in swapped order each round")
    parser.add_argument("--batch-size", type=int, default=8, help="our conversations per update")
    parser.add_argument("--workers", type=int, default=2, help="our DataLoader workers")
    parser.add_argument("--quick", action="store_true", help="one round of one timed update, our batch 2")
    args = parser.parse_args()
    llms = args.llm or ["tiny-llama", "smollm2-135m-offline"]
    steps, rounds, batch_size = (1, 1, 2) if args.quick else (args.steps, args.rounds, args.batch_size)
    warm = 1  # the first update of each way pays for start-up (worker spawn, first allocations)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp)
        inputs = prepare_inputs(root)
        tokenizer = ECGByteTokenizer.load(inputs["tokenizer"])
        print(
            f"fastest of {rounds} x {steps} timed updates, each way after {warm} warm-up; ours: batch "
            f"{batch_size}, {args.workers} workers; peer: batch {PEER_BATCH}; max length {MAX_LENGTH}; "
            f"torch threads {torch.get_num_threads()}"
        )
        header = (
            ("ours tok/s", 12),
            ("plain tok/s", 13),
            ("peer tok/s", 12),
            ("ours/peer", 11),
            ("ours/plain", 12),
        )
        print(f"{'LLM':<24}" + "".join(f"{name:>{width}}" for name, width in header))
        for llm in llms:
            model_settings, train = settings(llm, batch_size, warm + steps, args.workers)
            # the ELM the trainer builds (same config, same seed: the same LoRA and ECG rows)
            config = ELMConfig(
                **model_settings.model_dump(exclude={"representation", "encoder"}),
                architecture="token",
                representation="tokens",
                signal_length=1250,
                fs=250.0,
                seed=SEED,
            )
            elm = build_elm(config, ecg_tokenizer=tokenizer)
            batches = our_batches(elm, inputs, train, warm + steps)
            ways = {
                "ours": lambda r, llm=llm: ours(
                    inputs, llm, batch_size, warm + steps, args.workers, root / f"run-{llm}-{r}"
                ),
                "plain": lambda r, elm=elm, batches=batches: plain(elm, batches),
                "peer": lambda r, elm=elm: peer(elm, inputs, tokenizer, warm + steps),
            }
            best = dict.fromkeys(ways, 0.0)
            for r in range(rounds):  # swapped order each round: load from other processes favours none
                for name in list(ways) if r % 2 == 0 else list(reversed(ways)):
                    best[name] = max(best[name], *ways[name](r)[warm:])
            print(
                f"{llm:<24}{best['ours']:>12.0f}{best['plain']:>13.0f}{best['peer']:>12.0f}"
                f"{best['ours'] / best['peer']:>10.2f}x{best['ours'] / best['plain']:>11.2f}x"
            )


if __name__ == "__main__":
    main()
