"""Projectors: map ECG features (encoder ELM) or raw ECG patches (encoder-free ELM) to LLM soft tokens."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from ecgbench.models.config import ProjectorKind

PROJECTOR_KINDS: tuple[str, ...] = get_args(ProjectorKind)


class Projector(nn.Module):
    """``linear``: one affine map; ``mlp2``: Linear -> GELU -> Linear (the LLaVA-1.5 projector)."""

    def __init__(self, kind: ProjectorKind, in_dim: int, out_dim: int):
        super().__init__()
        if kind not in PROJECTOR_KINDS:
            raise ValueError(f"unknown projector {kind!r} (allowed: {', '.join(PROJECTOR_KINDS)})")
        self.kind = kind
        self.in_dim = in_dim
        self.out_dim = out_dim
        if kind == "linear":
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim))
        else:
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class PatchProjector(nn.Module):
    """The encoder-free front end: cut the input into patches and project each patch to one soft token.

    ``signal`` input (B, 12, L): a patch is ``patch_size`` consecutive samples of all twelve leads, so
    one token sees the same instant in every lead. ``stacked`` / ``image`` input (B, C, H, W): square
    ``patch_size`` x ``patch_size`` pixel patches in row-major order (as Fuyu does for images).
    """

    def __init__(
        self,
        representation: Literal["signal", "stacked", "image"],
        patch_size: int,
        in_channels: int,
        out_dim: int,
        kind: ProjectorKind = "mlp2",
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError("patch_size must be positive")
        self.representation = representation
        self.patch_size = patch_size
        patch_dim = in_channels * patch_size * (patch_size if representation != "signal" else 1)
        self.projector = Projector(kind, patch_dim, out_dim)

    def num_tokens(self, input_shape: tuple[int, ...]) -> int:
        """Soft tokens produced for one input of shape (C, L) or (C, H, W)."""
        p = self.patch_size
        if self.representation == "signal":
            return input_shape[-1] // p
        return (input_shape[-2] // p) * (input_shape[-1] // p)

    def patches(self, x: torch.Tensor) -> torch.Tensor:  # (B, tokens, patch_dim)
        p = self.patch_size
        if self.representation == "signal":
            if x.ndim != 3:
                raise ValueError(f"signal input must be (B, leads, samples), got {tuple(x.shape)}")
            b, c, _ = x.shape
            windows = x.unfold(-1, p, p)  # (B, C, T, p); a short tail is dropped
            return windows.permute(0, 2, 1, 3).reshape(b, windows.shape[2], c * p)
        if x.ndim != 4:
            raise ValueError(f"image input must be (B, C, H, W), got {tuple(x.shape)}")
        b, c, _, _ = x.shape
        tiles = x.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
        rows, cols = tiles.shape[2], tiles.shape[3]
        return tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, rows * cols, c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.patches(x))


def pool_tokens(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """Average-pool a token sequence (B, T, D) to exactly ``count`` tokens (identity when T == count)."""
    if tokens.shape[1] == count:
        return tokens
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), count).transpose(1, 2)
