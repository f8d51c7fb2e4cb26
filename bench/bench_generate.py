"""Answers per second of ``infer generate``: batched beside one question at a time, and the ELM beside the
bare LLM's own ``generate``.

    python bench/bench_generate.py [--quick] [--llm smollm2-135m-offline] [--batch-size 8]

Input: the bundled real sample (``data prepare sample``), its labels conversations split by patient, an
ECG-Byte tokenizer trained on the train split and an end-to-end ELM trained for one step (``train end2end``:
the real checkpoint path; the LLM is SmolLM2-135M-Instruct with real weights, or a tiny preset). The first
``--questions`` conversations of the set (one question each; every split, only the speed is measured) are
answered with the real ECGs, greedy, the LoRA adapters merged as ``infer generate`` merges them.

1. The whole harness (``generate_predictions``: reading, prompts, generation, the predictions file), once
   with ``--batch-size`` and once one question at a time; both files must hold the same answers.
2. The ELM's ``generate`` (ECG rows placed into ``inputs_embeds``) beside the LLM's own ``generate`` on the
   same prompts as token ids (the ECG symbols replaced by an ordinary token id: same lengths), the same
   batches (the harness's longest-first order, left-padded), exactly ``--max-new-tokens`` new tokens each
   (``min_new_tokens``: neither side may stop early). Each batch is the fastest of its repeats, the two
   taking turns.

Goals (issue 10): batched >= 4x one at a time on CPU; the ELM >= 0.9x the bare LLM. Reading a prompt (the
prefill) is compute-bound on a CPU and costs the same batched or not, so the script also prints the
prompts' share (one new token each, batched): one-at-a-time time over it bounds what batching can give.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig

from ecgbench.cli import app
from ecgbench.data.dataset import ConversationDataset
from ecgbench.infer.generate import Decoding, generate_predictions, merge_lora, questions
from ecgbench.models.checkpoint import load_elm


def ecgbench(*args: object) -> None:
    app([str(a) for a in args], standalone_mode=False)


def prepare(work: Path, llm: str, max_length: int) -> tuple[Path, Path, Path]:
    """(store, split labels set, checkpoint) in ``work``, each made once."""
    store, sets, run = work / "store", work / "split" / "labels.parquet", work / f"run-{llm}"
    if not store.exists():
        ecgbench("data", "prepare", "sample", "--out", store)
    if not sets.exists():
        ecgbench("data", "map", "labels", "--store", store, "--out", work / "sets")
        ecgbench("data", "split", "--store", store, "--sets", work / "sets" / "labels.parquet",
                 "--out", work / "split", "--folds", "5")  # fmt: skip
        ecgbench("tokenizer", "train", "--store", store, "--splits", work / "split" / "splits.parquet",
                 "--split", "train", "--num-merges", "300", "--out", work / "tokenizer.json")  # fmt: skip
    if not (run / "best").exists():
        ecgbench("train", "end2end", "--store", store, "--sets", sets, "--tokenizer", work / "tokenizer.json",
                 "--out", run, "--llm", llm, "--max-steps", "1", "--eval-every", "1", "--batch-size", "2",
                 "--max-length", max_length, "--val-max-conversations", "2", "--num-workers", "0",
                 "--report-to", "none")  # fmt: skip
    return store, sets, run / "best"


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_times(runs: list[Callable[[], object]], repeats: int) -> list[float]:
    """Fastest time of each run; the runs take turns and swap places every repeat (load from other
    processes must not favour whichever ran in a quiet moment)."""
    best = [float("inf")] * len(runs)
    for repeat in range(repeats):
        order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            best[i] = min(best[i], timed(runs[i]))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="smollm2-135m-offline")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (16 with --quick)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--questions", type=int, default=None, help="default 48 (24 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument("--work", type=Path, default=None, help="keep inputs here (default: a temp folder)")
    args = parser.parse_args()
    new_tokens = args.max_new_tokens or (16 if args.quick else 32)
    n_questions = args.questions or (24 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        store, sets, checkpoint = prepare(work, args.llm, args.max_length)
        elm = load_elm(checkpoint)
        merge_lora(elm)  # as `infer generate` does
        dataset = ConversationDataset([sets], [store])  # every split: only the speed is measured
        dataset.order = dataset.order[:n_questions]
        asked = questions(dataset)
        decoding = Decoding(max_new_tokens=new_tokens)
        print(
            f"LLM {args.llm}, {len(asked)} questions, {new_tokens} new tokens at most, greedy, "
            f"torch threads {torch.get_num_threads()}, best of {repeats}"
        )

        # 1. the harness, batched and one at a time
        def harness(batch_size: int, out: Path) -> Callable[[], object]:
            def run() -> None:
                (out / "predictions.jsonl").unlink(missing_ok=True)
                generate_predictions(elm, dataset, out, decoding=decoding, batch_size=batch_size,
                                     max_length=args.max_length)  # fmt: skip

            return run

        batched_dir, single_dir = work / "batched", work / "single"
        harness(args.batch_size, batched_dir)()  # warm-up: first calls pay for lazy initialisation
        batched, single = best_times([harness(args.batch_size, batched_dir), harness(1, single_dir)], repeats)

        def answers(folder: Path) -> dict[tuple[str, int], str]:
            lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
            return {(r["conversation_id"], r["turn"]): r["prediction"] for r in map(json.loads, lines)}

        same = answers(batched_dir) == answers(single_dir)
        n = len(asked)
        print(f"\nharness ({n} answers)          answers/s")
        print(f"  batched (batch {args.batch_size:>2})          {n / batched:>9.2f}")
        print(f"  one at a time               {n / single:>9.2f}")
        print(f"  batched / one at a time     {single / batched:>8.2f}x   (goal >= 4x)")
        print(f"  same answers (greedy):      {'yes' if same else 'NO'}")

        # 2. the ELM's generate beside the LLM's own, on the same prompt ids and batches
        order = sorted(asked, key=lambda q: -len(dataset.turns(q.index)[q.turn - 1]["content"]))
        prompts = []
        for q in order:
            item = dataset[q.index]
            prompts.append(
                elm.processor.prepare_prompt(item.turns[: q.turn], item.ecgs, max_length=args.max_length)
            )
        batches = [
            elm.processor.collate(prompts[i : i + args.batch_size], "left")
            for i in range(0, len(prompts), args.batch_size)
        ]
        exact = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
        config = GenerationConfig(**exact, pad_token_id=elm.pad_token_id, eos_token_id=elm.stop_token_ids())
        # the LLM alone cannot read the ECG symbols: an ordinary token in their place (same lengths)
        plain = [
            (
                b["input_ids"].masked_fill(b["input_ids"] >= elm.first_new_id, elm.pad_token_id),
                b["attention_mask"],
            )
            for b in batches
        ]
        llm = elm.llm

        def elm_batch(b: dict) -> Callable[[], object]:
            return lambda: elm.generate(b, **exact)

        def llm_batch(ids: torch.Tensor, mask: torch.Tensor) -> Callable[[], object]:
            return lambda: llm.generate(input_ids=ids, attention_mask=mask, generation_config=config)

        # batch by batch, each side the fastest of its repeats: a pass takes seconds, and a burst of load
        # from other processes must not decide the ratio
        ours = bare = 0.0
        with torch.no_grad():
            for b, (ids, mask) in zip(batches, plain, strict=True):
                elm_batch(b)()  # warm-up
                times = best_times([elm_batch(b), llm_batch(ids, mask)], 2 * repeats + 1)
                ours, bare = ours + times[0], bare + times[1]
        # what batching cannot change: reading the prompts (compute-bound on a CPU, the same work batched
        # or not); one new token per prompt, batched
        with torch.no_grad():
            prefill = sum(
                best_times([lambda b=b: elm.generate(b, max_new_tokens=1)], repeats)[0] for b in batches
            )
        print(f"  prompts alone (batched, 1 new token) {n / prefill:>9.2f}   "
              f"-> batching can give at most {single / prefill:.2f}x here")  # fmt: skip
        print(f"\ngenerate only ({n} answers x {new_tokens} tokens, batch {args.batch_size})   answers/s")
        print(f"  ELM.generate (inputs_embeds)             {n / ours:>9.2f}")
        print(f"  the LLM's own generate (input_ids)       {n / bare:>9.2f}")
        print(f"  ELM / bare LLM                           {bare / ours:>8.2f}x   (goal >= 0.9x)")


if __name__ == "__main__":
    main()
