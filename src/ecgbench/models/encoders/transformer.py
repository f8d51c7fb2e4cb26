"""ViT-style building blocks shared by the ECG masked autoencoders (ST-MEM, MLAE, MTAE).

One implementation of the pieces the papers agree on: pre-norm transformer blocks, fixed sin-cos
positional embeddings over patch index, cutting leads into non-overlapping time patches, and MAE-style
random masking by groups of tokens (a group is one patch, one time step across leads, or one lead).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecgbench.errors import UserError


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise UserError(f"width {width} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, width),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """``depth`` blocks followed by a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def sincos_positions(n: int, dim: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Fixed 1-D sin-cos positional embeddings (n, dim), as in the Transformer and MAE.

    Fixed rather than learned so any number of patches works without a length limit in the checkpoint.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1)
    )
    angles = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, leads, L) -> (B, leads, L // patch_size, patch_size); L must be a multiple of patch_size."""
    if x.ndim != 3:
        raise UserError(f"expected a signal batch (B, leads, samples), got shape {tuple(x.shape)}")
    length = x.shape[-1]
    if length % patch_size:
        raise UserError(
            f"signal length {length} is not a multiple of the patch size {patch_size}; "
            "choose a segment length or patch size that divides it"
        )
    return x.reshape(x.shape[0], x.shape[1], length // patch_size, patch_size)


def sample_kept_groups(
    batch: int,
    groups: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Bool (batch, groups): True for the groups left visible.

    Every row keeps the same number of groups, so visible tokens gather into a dense tensor.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise UserError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    keep = max(1, round(groups * (1.0 - mask_ratio)))
    gen_device = generator.device if generator is not None else device
    noise = torch.rand(batch, groups, generator=generator, device=gen_device).to(device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return ranks < keep


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, T, D), index (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: Xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
