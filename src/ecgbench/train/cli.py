"""``ecgbench train <paradigm>``: one command per paradigm of the table, one training loop behind them.

Runs the same on one CPU, one GPU, or many under ``accelerate launch -m ecgbench.cli train ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ecgbench.commands import SetsOption, SplitsOption, StoresOption, new_group, settings_options
from ecgbench.console import stdout
from ecgbench.errors import UserError
from ecgbench.models.config import ModelSettings
from ecgbench.settings import DPOSettings, TrainSettings
from ecgbench.train.paradigms import PARADIGMS

app = new_group()

TokenizerOption = Annotated[
    Path | None, typer.Option("--tokenizer", help="ECG-Byte tokenizer.json (paradigm end2end)")
]
InitOption = Annotated[
    Path | None,
    typer.Option(
        "--init-from",
        help="start from this ELM checkpoint or run folder (its best checkpoint), e.g. after a "
        "projector-only stage; LoRA and the other --llm-training flags apply to the new stage",
    ),
]
ResumeOption = Annotated[
    Path | None,
    typer.Option("--resume", help="continue this killed or finished run folder at its last checkpoint"),
]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="run folder to create")]


def _run_folder(out: Path | None, resume: Path | None) -> Path:
    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise UserError("--resume names the run folder; drop --out or give the same folder")
    if resume is None and out is None:
        raise UserError("give --out RUN_DIR (or --resume RUN_DIR)")
    return Path(resume or out)  # type: ignore[arg-type]


def _summary(result: Any, steps: str, items: str) -> None:
    """The lines a finished run prints, once (under `accelerate launch` every process returns here)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    best = (
        "none" if result.best_val_loss is None else f"{result.best_val_loss:.4f} at step {result.best_step}"
    )
    stdout.print(f"trained {result.steps} {steps}; best val loss {best}")
    if result.skipped:
        stdout.print(f"{result.skipped} {items} were skipped (see the log above)")
    stdout.print(f"run folder: {result.out}")


def _command(name: str) -> Any:
    summary = PARADIGMS[name].summary

    @settings_options("train", "model", "seed")
    def command(
        store: StoresOption,
        sets: SetsOption = None,
        splits: SplitsOption = None,
        tokenizer: TokenizerOption = None,
        init_from: InitOption = None,
        out: OutOption = None,
        resume: ResumeOption = None,
        *,
        train: TrainSettings,
        model: ModelSettings,
        seed: int,
    ) -> None:
        from ecgbench.train.loop import TrainInputs, train_elm

        if not sets:
            raise UserError("give at least one --sets conversation set (from `data map`)")
        folder = _run_folder(out, resume)
        result = train_elm(
            TrainInputs(
                paradigm=name,
                stores=list(store),
                sets=list(sets),
                splits=splits,
                tokenizer=tokenizer,
                init_from=init_from,
                out=folder,
                resume=resume is not None,
            ),
            model,
            train,
            seed,
        )
        _summary(result, "steps", "conversations")

    command.__doc__ = f"Train an ELM: {summary}."
    return command


for _name in PARADIGMS:
    app.command(_name)(_command(_name))


@app.command("dpo")
@settings_options("dpo", "seed")
def dpo_command(
    checkpoint: Annotated[
        Path,
        typer.Option("--checkpoint", help="the trained ELM: a `train` run folder (its best) or a checkpoint"),
    ],
    preferences: Annotated[
        Path | None,
        typer.Option(
            "--preferences",
            help="preference set (.parquet) from `judge compare|rank|export` (offline DPO; or --judge)",
        ),
    ] = None,
    store: Annotated[
        list[Path] | None,
        typer.Option(
            "--store",
            metavar="<path>",
            help="segment store(s) of the pairs' ECGs (default: the checkpoint's run's)",
        ),
    ] = None,
    splits: Annotated[
        Path | None,
        typer.Option("--splits", help="record splits from `data split` (default: the checkpoint's run's)"),
    ] = None,
    sets: Annotated[
        list[Path] | None,
        typer.Option(
            "--sets",
            metavar="<path>",
            help="online DPO: conversation sets whose questions are asked (default: the checkpoint's run's)",
        ),
    ] = None,
    out: OutOption = None,
    resume: ResumeOption = None,
    *,
    dpo: DPOSettings,
    seed: int,
) -> None:
    """Preference-optimise a trained ELM (DPO) with a frozen reference: offline on judged pairs of its train
    split (--preferences), or online (--judge): rounds of answers sampled from the policy, judged, trained on.
    """
    from ecgbench.train.dpo import DPOInputs, train_dpo
    from ecgbench.train.online_dpo import train_online_dpo

    folder = _run_folder(out, resume)
    result = (train_online_dpo if dpo.judge is not None else train_dpo)(
        DPOInputs(
            checkpoint=checkpoint,
            preferences=preferences,
            out=folder,
            stores=list(store) if store else None,
            splits=splits,
            sets=list(sets) if sets else None,
            resume=resume is not None,
        ),
        dpo,
        seed,
    )
    _summary(result, "DPO steps", "pairs")
