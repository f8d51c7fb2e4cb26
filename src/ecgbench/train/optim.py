"""The optimizer and learning-rate schedule every trainer uses.

AdamW with weight decay only on weight matrices: norms, biases and embedding tables are left
undecayed (decaying them shrinks scales and rare-token rows for no regularisation benefit). The
schedule counts optimizer updates, never micro-batches, so with gradient accumulation k the warmup
lasts exactly ``warmup_steps`` updates (the peer's successor stepped per update but counted
micro-batches, stretching warmup k times).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Schedule = Literal["cosine", "linear", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that get no weight decay: biases, norm scales and embedding tables."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        is_table = isinstance(module, nn.Embedding)
        is_norm = isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.BatchNorm1d | nn.BatchNorm2d) or (
            "norm" in type(module).__name__.lower()  # RMSNorm variants of each LLM family
        )
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_table or is_norm or param_name.endswith("bias"):
                names.add(full)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Trainable parameters in two AdamW groups: decayed matrices, and everything else undecayed."""
    skip = _no_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # 1-D tensors (scales, biases, learned positions of one row) are never decayed either
        (no_decay if name in skip or param.ndim < 2 else decay).append(param)
    groups: list[dict[str, object]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_factor(
    step: int, *, total_steps: int, warmup_steps: int, schedule: Schedule, min_ratio: float
) -> float:
    """Multiplier of the peak learning rate before optimizer update ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        shape = 1.0 - progress
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule = "cosine",
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A schedule over ``total_steps`` optimizer updates; step it once per update."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule, min_ratio=min_ratio
        ),
    )
