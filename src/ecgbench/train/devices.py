"""The one way a trainer gets its accelerate ``Accelerator``."""

from __future__ import annotations

from typing import Any

from ecgbench.errors import UserError


def make_accelerator(mixed_precision: str, **kwargs: Any) -> Any:
    """An Accelerator for one run: devices, processes and mixed precision from accelerate.

    accelerate keeps one process-wide state and refuses a second Accelerator with another mixed
    precision, but a recipe (``ecgbench run``) trains several models in one process: the per-run state
    is reset (the process group and device, PartialState, are kept). Without a GPU, ``cpu=True`` lets
    processes started by ``accelerate launch`` / ``torchrun`` join as MULTI_CPU over gloo instead of
    each training alone.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision, **kwargs)
    if mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate would silently run fp32 on a CPU: a flag that does nothing is refused instead
        raise UserError("--mixed-precision fp16 needs a GPU; use bf16 (or no) on a CPU")
    return accelerator
