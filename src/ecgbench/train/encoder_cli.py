"""``ecgbench encoder train | embed``: stage-1 encoder pretraining and segment embeddings.

Kept light at import time (``ecgbench encoder --help`` loads no torch): the library is imported inside
the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecgbench.commands import SplitOption, SplitsOption, StoreOption, new_group, out_option, settings_options
from ecgbench.console import stdout
from ecgbench.settings import EncoderTrainSettings

app = new_group()


@app.command("train")
@settings_options("encoder", "seed")
def train_command(
    store: StoreOption,
    splits: Annotated[Path, typer.Option("--splits", help="splits.parquet from `data split`")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="new run folder: encoder/, metrics.jsonl, run.json, checkpoints/"),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue this killed or finished run folder")
    ] = None,
    *,
    encoder: EncoderTrainSettings,
    seed: int,
) -> None:
    """Pretrain an ECG or vision encoder on a store's train split; keep the best by validation loss.

    Objectives: masked reconstruction (st-mem, mlae, mtae), ECG-report contrastive (merl), image-report
    contrastive (clip, siglip), masked image modelling (vit, dinov2). OUT/encoder is the checkpoint an ELM
    reads as `encoder_checkpoint` and `encoder embed` reads as --encoder-checkpoint. Resumable checkpoints
    are written at every evaluation; `--resume OUT` continues at the same update."""
    from accelerate import PartialState
    from rich.table import Table

    from ecgbench.errors import UserError
    from ecgbench.train.encoder import train_encoder

    if resume is not None and out is not None and out.resolve() != resume.resolve():
        raise UserError("--resume names the run folder; drop --out or give the same folder")
    if resume is None and out is None:
        raise UserError("give --out RUN_DIR (or --resume RUN_DIR)")
    result = train_encoder(store, splits, resume or out, encoder, seed=seed, resume=resume is not None)
    if not PartialState().is_main_process:  # under `accelerate launch`: one summary, not one per process
        return
    table = Table(title=f"encoder train: {encoder.encoder} ({encoder.preset})", show_header=False)
    table.add_row("segments (train / val)", f"{result.train_segments} / {result.val_segments}")
    for split, count in result.skipped_without_text.items():
        if count:
            table.add_row(f"skipped in {split} (no report or labels)", str(count))
    table.add_row("optimizer updates", str(result.steps))
    table.add_row(
        "val loss (initial -> best)", f"{result.initial_val_loss:.4f} -> {result.best_val_loss:.4f}"
    )
    table.add_row("best step", str(result.best_step))
    table.add_row("time", f"{result.seconds:.1f} s")
    stdout.print(table)
    stdout.print(f"wrote {result.checkpoint}")


@app.command("embed")
@settings_options("encoder.batch_size", "encoder.representation")
def embed_command(
    encoder_checkpoint: Annotated[
        Path, typer.Option("--encoder-checkpoint", help="encoder folder (OUT/encoder of `encoder train`)")
    ],
    store: StoreOption,
    out: Annotated[Path, out_option("Parquet file to write: segment_id, corpus, record_id, embedding")],
    splits: SplitsOption = None,
    split: SplitOption = None,
    *,
    encoder: EncoderTrainSettings,
) -> None:
    """Mean-pooled encoder features of every segment (or of one split), float32, for probes and RAG."""
    from ecgbench.train.encoder import embed_segments

    result = embed_segments(
        encoder_checkpoint,
        store,
        out,
        splits_path=splits,
        split=split,
        batch_size=encoder.batch_size,
        representation=encoder.representation,
    )
    stdout.print(f"embedded {result.segments} segments ({result.dim} dims) in {result.seconds:.1f} s")
    stdout.print(f"wrote {result.out}")
