"""The run folder a training command writes, and reads back on ``--resume``.

::

    RUN/run.json                 what ran: paradigm, resolved settings, ELM config, inputs with checksums,
                                 library versions, git revision, status, best step
    RUN/metrics.jsonl            one line per logged step (step, epoch, split, loss, lr, tokens_per_s)
    RUN/loss_curve.png           train and val loss
    RUN/tensorboard/             tracker logs (when --report-to tensorboard)
    RUN/best/                    the ELM checkpoint with the lowest validation loss
    RUN/checkpoints/step-N/      resumable: the ELM checkpoint plus training_state/ (the newest few)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ecgbench import __version__
from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"
BEST_DIR = "best"
CHECKPOINTS_DIR = "checkpoints"
RUN_FORMAT = "ecgbench-train-run"
RUN_VERSION = 1


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"ecgbench": __version__}
    for name in ("torch", "transformers", "peft", "accelerate", "numpy", "pyarrow"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def git_revision() -> str | None:
    """The revision of the ecgbench source tree, where it is a git checkout (with -dirty if changed)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev or None


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8"))


def read_run(directory: Path) -> dict[str, Any]:
    path = directory / RUN_FILE
    if not path.is_file():
        raise UserError(f"{directory} is not a training run (no {RUN_FILE}); start one without --resume")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is damaged: {exc}") from None
    if document.get("format") != RUN_FORMAT:
        raise UserError(f"{path} is not an ecgbench training run")
    if document.get("version", 0) > RUN_VERSION:
        raise UserError(f"{path} was written by a newer ecgbench")
    return document


def step_dir(directory: Path, step: int) -> Path:
    return directory / CHECKPOINTS_DIR / f"step-{step:07d}"


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Finished resumable checkpoints, oldest first (a folder is finished once it holds its position)."""
    from ecgbench.train.state import POSITION_FILE, STATE_DIR

    found = []
    for path in (directory / CHECKPOINTS_DIR).glob("step-*"):
        if path.is_dir() and (path / STATE_DIR / POSITION_FILE).is_file() and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return sorted(found)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (the old one, if any, is removed only afterwards)."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def write_checkpoint(final: Path, write: Any, accelerator: Any) -> None:
    """Write a resumable checkpoint folder from every process (call it on all of them): the main process
    writes the weights and the shared state with ``write(tmp)`` (optimizer states are the same on every
    process under DDP), each other process adds its own RNG state, then the folder replaces ``final`` at
    once, so a killed run never leaves a checkpoint that lacks a process's state."""
    from ecgbench.train.state import STATE_DIR, save_rng

    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        write(tmp)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        save_rng(tmp / STATE_DIR, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)


def prune_checkpoints(directory: Path, keep: int) -> None:
    for _, path in checkpoints(directory)[:-keep]:
        shutil.rmtree(path)


def append_metrics(directory: Path, rows: list[dict[str, Any]]) -> None:
    with open(directory / METRICS_FILE, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: everything after it is redone on resume
            break
    return rows


def truncate_metrics(directory: Path, step: int) -> None:
    """Keep only the lines up to ``step`` (a resumed run logs the later ones again)."""
    kept = [row for row in read_metrics(directory) if row["step"] <= step]
    body = "".join(json.dumps(row) + "\n" for row in kept)
    atomic_write(directory / METRICS_FILE, lambda tmp: tmp.write_text(body, encoding="utf-8"))


def plot_loss_curve(directory: Path, unit: str = "answer token") -> Path | None:
    rows = read_metrics(directory)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for split, style in (("train", "-"), ("val", "o-")):
        points = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, style, label=split, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss (per {unit})")
    ax.set_title(directory.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = directory / CURVE_FILE
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path
