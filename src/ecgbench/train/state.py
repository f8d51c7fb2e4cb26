"""Resumable training state without pickle: optimizer, scheduler, RNG of every process, data position.

accelerate's ``save_state`` writes the optimizer and the RNG states with ``torch.save`` (pickle), and the
whole model besides; our formats hold no pickle and a checkpoint holds only what was trained. So the
state is written here as safetensors (tensors) plus JSON (everything else), and the trained weights
live in the ELM checkpoint folder next to it.

Layout of ``STATE_DIR`` (inside a step checkpoint)::

    optimizer.safetensors   every per-parameter tensor (``state.<param index>.<key>``)
    optimizer.json          param groups (without the parameters) and the scalar state
    rng-<rank>.safetensors  torch (and CUDA) generator states of process <rank>
    rng-<rank>.json         Python's and numpy's generator states of process <rank>
    position.json           update step, epoch, batch within the epoch, best val loss, ...
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ecgbench.errors import CorruptFileError
from ecgbench.files import atomic_write

STATE_DIR = "training_state"
POSITION_FILE = "position.json"


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptFileError(f"training state file missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"training state file {path} is damaged: {exc}") from None


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    atomic_write(directory / "optimizer.safetensors", lambda p: save_file(tensors, str(p)))
    _write_json(directory / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    meta = _read_json(directory / "optimizer.json")
    try:
        tensors = load_file(str(directory / "optimizer.safetensors"))
    except (OSError, RuntimeError) as exc:
        raise CorruptFileError(f"cannot read {directory / 'optimizer.safetensors'}: {exc}") from None
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_rng(directory: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for device, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{device}"] = value
    atomic_write(directory / f"rng-{rank}.safetensors", lambda p: save_file(tensors, str(p)))
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    _write_json(
        directory / f"rng-{rank}.json",
        {
            "python": [version, list(internal), gauss_next],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        },
    )


def load_rng(directory: Path, rank: int) -> None:
    tensors = load_file(str(directory / f"rng-{rank}.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    meta = _read_json(directory / f"rng-{rank}.json")
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def save_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, directory: Path) -> None:
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    _write_json(directory / "scheduler.json", state)


def load_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler, directory: Path) -> None:
    state = _read_json(directory / "scheduler.json")
    state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)  # type: ignore[attr-defined]
    scheduler.load_state_dict(state)


def write_position(directory: Path, position: dict[str, Any]) -> None:
    _write_json(directory / POSITION_FILE, position)


def read_position(directory: Path) -> dict[str, Any]:
    return _read_json(directory / POSITION_FILE)


def save_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    position: dict[str, Any],
    rank: int,
) -> None:
    """Everything a resumed run needs besides the weights, into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_optimizer(optimizer, directory)
    save_scheduler(scheduler, directory)
    write_position(directory, position)
    save_rng(directory, rank)


def load_training_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the saved position."""
    load_optimizer(optimizer, directory)
    load_scheduler(scheduler, directory)
    load_rng(directory, rank)
    return read_position(directory)
