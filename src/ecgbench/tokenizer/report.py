"""What ``tokenizer inspect`` reports: the vocabulary, and compression and token lengths on held-out input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.tokenizer.core import ECGByteTokenizer
from ecgbench.tokenizer.inputs import Inputs, encode_inputs


def describe(
    tokenizer: ECGByteTokenizer,
    inputs: Inputs | None = None,
    *,
    split: str | None = None,
    threads: int | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The tokenizer's vocabulary and training facts; with ``inputs``, their compression under both encode
    modes. Also returns the symbols-per-token length of every token the tokenizer's own mode produced."""
    lengths = tokenizer.token_lengths()
    info: dict[str, Any] = {
        "vocab_size": tokenizer.vocab_size,
        "merges": tokenizer.num_merges,
        "normalization": tokenizer.symbolizer.normalization,
        "lead_boundaries": tokenizer.lead_boundaries,
        "encode_mode": tokenizer.encode_mode,
        "vocab_token_length": {"mean": float(lengths.mean()), "max": int(lengths.max())},
    }
    if tokenizer.training:
        info["training"] = tokenizer.training
    if tokenizer.imported_from:
        info["imported_from"] = {k: v for k, v in tokenizer.imported_from.items() if k != "peer_ids"}
    used: np.ndarray | None = None
    if inputs is not None:
        held_out: dict[str, Any] = {"segments": len(inputs)}
        if split is not None:
            held_out["split"] = split
        for mode in ("bpe", "greedy"):
            ids, _ = encode_inputs(tokenizer, inputs, mode, threads)
            n_tokens = sum(len(s) for s in ids)
            n_symbols = sum(int(lengths[s].sum()) for s in ids)
            held_out[mode] = {
                "symbols": n_symbols,
                "tokens": n_tokens,
                "compression_ratio": n_symbols / n_tokens,
            }
            if mode == tokenizer.encode_mode:
                used = lengths[np.concatenate(ids)] if ids else None
        info["held_out"] = held_out
    return info, used


def write_histogram(path: Path, vocab_lengths: np.ndarray, used_lengths: np.ndarray | None) -> None:
    """A PNG of symbols per token: over the vocabulary, and over the held-out tokens when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("vocabulary", vocab_lengths)] + (
        [("held-out tokens", used_lengths)] if used_lengths is not None else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        bins = np.arange(1, int(values.max()) + 2) - 0.5
        ax.hist(values, bins=bins, color="#3a6ea5")
        ax.set_title(f"symbols per token: {title}")
        ax.set_xlabel("symbols per token")
        ax.set_ylabel("count")
        ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
