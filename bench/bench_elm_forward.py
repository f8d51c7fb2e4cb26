"""Forward throughput of each ELM at tiny size, beside the peer's way of feeding the same batch.

    python bench/bench_elm_forward.py [--llm tiny-llama] [--batch 8] [--repeats 5]

Input: the bundled PTB-XL records (ecg_ids 6000-6004, resampled to 250 Hz, 5 s segments) with one
real ECG-QA question each. For every ELM the script prints forward tokens per second (the training
forward with labels and loss, in eval mode without gradient; each the fastest of its repeats, ours
and the peer's timed in turn) of

- ours: ``ELM.forward`` -- ECG rows from the ELM's own table / soft tokens placed with one
  ``masked_scatter``, then the LLM on ``inputs_embeds``;
- the peer's way (ECG-Bench, as its code does it): the token ELM enlarges the LLM vocabulary
  (``resize_token_embeddings``) and runs ``input_ids``; the soft-token ELMs copy the embeddings, write
  the projected tokens by advanced indexing at per-row index lists, read them back and compare
  (``allclose``) before running the LLM. Its index lists are rectangular, so it takes exactly one ECG
  per conversation: the batch here has one ECG per conversation for both.

and the ratio ours / peer. Both run the same LLM weights on the same ids; outputs agree (checked).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from ecgbench.data.readers.base import read_wfdb
from ecgbench.data.signal import resample
from ecgbench.models.elm import ELM, ELMConfig, build_elm
from ecgbench.resources import SAMPLE_DIR
from ecgbench.tokenizer import ECGByteTokenizer

FS = 250
SEGMENT = 1250
VARIANTS: dict[str, dict] = {
    "token": {"architecture": "token", "representation": "tokens"},
    "encoder (st-mem, signal)": {
        "architecture": "encoder",
        "representation": "signal",
        "encoder": "st-mem",
        "num_soft_tokens": 32,
    },
    "encoder (vit, image)": {"architecture": "encoder", "representation": "image", "encoder": "vit"},
    "encoder-free (signal)": {"architecture": "encoder-free", "representation": "signal", "patch_size": 25},
    "encoder-free (stacked)": {"architecture": "encoder-free", "representation": "stacked", "patch_size": 16},
}


def real_inputs(batch: int) -> tuple[list[np.ndarray], list[list[dict[str, str]]]]:
    segments = []
    for i in range(5):
        signal, _, _, fs, _ = read_wfdb(str(SAMPLE_DIR / "ptbxl_cinc2021" / f"HR0600{i}"))
        signal = resample(signal, fs, FS).astype(np.float32)
        segments += [signal[:, start : start + SEGMENT] for start in (0, SEGMENT)]
    items = json.loads((SAMPLE_DIR / "ecgqa/ptbxl/paraphrased/train/120000.json").read_text())
    turns = [
        [
            {"role": "user", "content": f"<ecg>\n{item['question']}"},
            {"role": "assistant", "content": ", ".join(item["answer"])},
        ]
        for item in items
    ]
    return [segments[i % len(segments)] for i in range(batch)], [turns[i % len(turns)] for i in range(batch)]


def outputs_agree(runs: list[Callable[[], torch.Tensor]]) -> bool:
    """Both ways give the same logits (the peer's may have extra vocabulary columns at the end)."""
    with torch.no_grad():
        ours, peer = (run() for run in runs)
        return torch.allclose(ours, peer[..., : ours.shape[-1]], atol=1e-4, rtol=1e-4)


def best_rates(runs: list[Callable[[], torch.Tensor]], tokens: int, repeats: int) -> list[float]:
    """Tokens per second of each run at its fastest repeat. The runs take turns and swap places every
    repeat: whichever runs first in a round pays for fresh memory (the logits are gigabytes), and load
    from other processes must not favour whichever ran in a quiet moment."""
    best = [float("inf")] * len(runs)
    with torch.no_grad():
        for run in runs:  # warm-up
            run()
        for repeat in range(repeats):
            order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
            for i in order:
                start = time.perf_counter()
                runs[i]()
                best[i] = min(best[i], time.perf_counter() - start)
    return [tokens / seconds for seconds in best]


def peer_token_forward(elm: ELM) -> Callable[[dict], torch.Tensor]:
    """The vocabulary-resize way: new rows appended to the LLM's own embedding matrix."""
    import copy

    model = copy.deepcopy(elm.llm)
    model.resize_token_embeddings(elm.first_new_id + elm.num_new_tokens, mean_resizing=False)
    with torch.no_grad():
        rows = model.get_input_embeddings().weight
        rows[elm.first_new_id :] = elm.ecg_embeddings.weight  # type: ignore[union-attr]
    # Same autograd work as ours: the appended rows train exactly when our new rows do.
    rows.requires_grad_(elm.ecg_embeddings.weight.requires_grad)  # type: ignore[union-attr]
    model.eval()

    def run(batch: dict) -> torch.Tensor:
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits

    return run


def peer_soft_forward(elm: ELM) -> Callable[[dict], torch.Tensor]:
    """Index-list splicing with a read-back check, one ECG per conversation."""

    def run(batch: dict) -> torch.Tensor:
        ids = batch["input_ids"]
        embeds = elm.llm.get_input_embeddings()(ids.masked_fill(ids >= elm.first_new_id, 0))
        soft = elm.soft_tokens(batch["ecg"]).to(embeds.dtype)  # (B, N, D)
        positions = torch.stack([(row == elm.placeholder_id).nonzero().flatten() for row in ids])  # (B, N)
        rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(positions)
        out = embeds.clone()
        out[rows.reshape(-1), positions.reshape(-1)] = soft.reshape(-1, soft.shape[-1])
        assert torch.allclose(out[rows, positions], soft, atol=1e-6)
        return elm.llm(
            inputs_embeds=out, attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="tiny-llama")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    ecgs, conversations = real_inputs(args.batch)
    tokenizer = ECGByteTokenizer.train(np.stack(ecgs), num_merges=500)

    print(
        f"LLM {args.llm}, batch {args.batch}, {args.repeats} repeats, torch threads {torch.get_num_threads()}"
    )
    print(f"{'ELM':<26}{'tokens':>8}{'ours tok/s':>13}{'peer tok/s':>13}{'ours/peer':>11}")
    for name, fields in VARIANTS.items():
        config = ELMConfig(**fields, llm=args.llm, signal_length=SEGMENT, fs=FS, llm_training="frozen")
        elm = build_elm(config, ecg_tokenizer=tokenizer if config.architecture == "token" else None).eval()
        examples = [
            elm.processor.prepare_example(t, [e], max_length=args.max_length)
            for t, e in zip(conversations, ecgs, strict=True)
        ]
        batch = elm.processor.collate(examples)
        tokens = int(batch["attention_mask"].sum())
        peer_run = peer_token_forward(elm) if config.architecture == "token" else peer_soft_forward(elm)
        runs = [lambda b=batch, m=elm: m(b).logits, lambda b=batch, r=peer_run: r(b)]
        note = "" if outputs_agree(runs) else "  (outputs differ!)"
        ours, peer = best_rates(runs, tokens, args.repeats)
        print(f"{name:<26}{tokens:>8}{ours:>13.0f}{peer:>13.0f}{ours / peer:>10.2f}x{note}")


if __name__ == "__main__":
    main()
