"""One masked-autoencoder implementation behind ST-MEM, MLAE and MTAE.

The three differ only in how a 12-lead signal becomes tokens and which tokens are masked together:

- ``lead_patches``: every lead is cut into time patches; each patch is a token carrying a temporal
  position and a learned lead embedding (ST-MEM, MLAE). ST-MEM adds lead-wise SEP tokens.
- ``time_patches``: a patch spans all 12 leads over one time window; one token per window (MTAE).

Masking picks whole groups at random: a group is one token (ST-MEM, MTAE) or one lead (MLAE). The
encoder sees only visible tokens; a lighter decoder gets mask tokens at the hidden positions and
reconstructs the raw samples of each patch; the loss is the MSE over the masked patches (MAE).

``features`` never masks: all tokens go through the encoder, so it is deterministic in eval mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import torch
from torch import nn

from ecgbench.errors import UserError
from ecgbench.models.encoders.base import ECGEncoder
from ecgbench.models.encoders.transformer import (
    TransformerStack,
    gather_tokens,
    init_weights,
    patchify,
    sample_kept_groups,
    sincos_positions,
)


@dataclass(frozen=True)
class MaskedAutoencoderConfig:
    patch_size: int = 50
    width: int = 768
    depth: int = 12
    heads: int = 12
    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    leads: int = 12
    dropout: float = 0.0
    #: normalise each target patch to zero mean / unit variance (MAE's "norm_pix_loss")
    norm_target: bool = False

    def __post_init__(self) -> None:
        sizes = ("patch_size", "width", "depth", "heads", "leads", "decoder_width", "decoder_depth")
        bad = [
            name
            for name in (*sizes, "decoder_heads")
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1
        ]
        if bad:
            raise UserError(f"encoder option(s) {', '.join(bad)} must be positive integers")
        if self.mlp_ratio <= 0 or not 0.0 <= self.mask_ratio < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise UserError("encoder options need mlp_ratio > 0, 0 <= mask_ratio < 1 and 0 <= dropout < 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MaskedAutoencoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"unknown encoder option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


#: model sizes. "base" is the ViT-B/16-like size of the ST-MEM paper (encoder 768 x 12 layers x 12 heads,
#: decoder 256 x 4 x 4). The paper cuts 2250-sample (9 s at 250 Hz) inputs into 75-sample patches; the
#: default patch of 50 samples divides this package's 1250-sample (5 s) segments. Override patch_size=75
#: for the paper's exact tokenisation on 2250-sample inputs.
PRESETS: dict[str, MaskedAutoencoderConfig] = {
    "base": MaskedAutoencoderConfig(),
    "tiny": MaskedAutoencoderConfig(
        patch_size=50, width=32, depth=2, heads=2, decoder_width=32, decoder_depth=1, decoder_heads=2
    ),
}


def preset_config(preset: str, **overrides: Any) -> MaskedAutoencoderConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return MaskedAutoencoderConfig.from_dict({**asdict(PRESETS[preset]), **overrides})


class MaskedSignalAutoencoder(ECGEncoder):
    """Masked autoencoder over a (B, leads, L) signal; subclasses choose tokens and mask groups."""

    representation = "signal"
    objective = "masked reconstruction"
    tokens: ClassVar[Literal["lead_patches", "time_patches"]]
    mask_unit: ClassVar[Literal["token", "lead"]]
    lead_separators: ClassVar[bool] = False

    def __init__(self, config: MaskedAutoencoderConfig):
        super().__init__()
        self.config = config
        self.out_dim = config.width
        per_token = config.patch_size if self.tokens == "lead_patches" else config.patch_size * config.leads
        self.patch_embed = nn.Linear(per_token, config.width)
        self.encoder = TransformerStack(
            config.width, config.depth, config.heads, config.mlp_ratio, config.dropout
        )
        self.decoder_embed = nn.Linear(config.width, config.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_width))
        self.decoder = TransformerStack(
            config.decoder_width, config.decoder_depth, config.decoder_heads, config.mlp_ratio, config.dropout
        )
        self.decoder_head = nn.Linear(config.decoder_width, per_token)
        if self.tokens == "lead_patches":
            self.lead_embed = nn.Parameter(torch.zeros(1, config.leads, 1, config.width))
            self.decoder_lead_embed = nn.Parameter(torch.zeros(1, config.leads, 1, config.decoder_width))
        if self.lead_separators:
            self.sep_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.apply(init_weights)
        for name, param in self.named_parameters():
            if name in {"mask_token", "lead_embed", "decoder_lead_embed", "sep_token"}:
                nn.init.normal_(param, std=0.02)

    # -- checkpoints --------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path | None = None) -> Self:
        return cls(MaskedAutoencoderConfig.from_dict(config))

    # -- tokens -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.config.leads:
            raise UserError(
                f"{self.name} expects a signal batch (B, {self.config.leads}, L), got shape {tuple(x.shape)}"
            )

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction targets, one row per token: (B, T, per_token)."""
        patches = patchify(x, self.config.patch_size)  # (B, leads, N, P)
        if self.tokens == "lead_patches":
            return patches.flatten(1, 2)  # lead-major: lead 0 patches, then lead 1, ...
        return patches.permute(0, 2, 1, 3).flatten(2)  # (B, N, leads * P)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """All patch tokens with positions: (B, T, width)."""
        patches = patchify(x, self.config.patch_size)
        n_patches = patches.shape[2]
        # Position 0 (and N + 1) is reserved for the separators, so patches sit at 1..N.
        offset = 1 if self.lead_separators else 0
        pos = sincos_positions(n_patches + 2 * offset, self.config.width, device=x.device)[
            offset : offset + n_patches
        ]
        if self.tokens == "lead_patches":
            tokens = self.patch_embed(patches) + pos.to(x.dtype) + self.lead_embed
            return tokens.flatten(1, 2)
        return self.patch_embed(patches.permute(0, 2, 1, 3).flatten(2)) + pos.to(x.dtype)

    def _separators(
        self, batch: int, n_patches: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """ST-MEM's lead-wise SEP tokens (B, 2 * leads, width): per lead one at the start, one at the end."""
        pos = sincos_positions(n_patches + 2, self.config.width, device=device).to(dtype)
        ends = torch.stack([pos[0], pos[-1]])[None, :, :]  # (1, 2, width)
        seps = self.sep_token[:, None] + ends[:, None] + self.lead_embed  # (1, leads, 2, width)
        return seps.flatten(1, 2).expand(batch, -1, -1)

    def _group_of_token(
        self, n_tokens: int, n_patches: int, device: torch.device
    ) -> tuple[int, torch.Tensor]:
        if self.mask_unit == "lead":
            return self.config.leads, torch.arange(self.config.leads, device=device).repeat_interleave(
                n_patches
            )
        return n_tokens, torch.arange(n_tokens, device=device)

    # -- forwards -----------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token, unmasked: (B, tokens, width).

        Token order: lead-major patches (lead_patches) or time windows (time_patches). With lead
        separators each lead reads [SEP, patch 1..N, SEP].
        """
        self._check_input(x)
        tokens = self._embed(x)
        if not self.lead_separators:
            return self.encoder(tokens)
        batch, n_patches = x.shape[0], x.shape[-1] // self.config.patch_size
        seps = self._separators(batch, n_patches, x.device, tokens.dtype)
        out = self.encoder(torch.cat([seps, tokens], dim=1))
        width, leads = out.shape[-1], self.config.leads
        sep_out = out[:, : 2 * leads].reshape(batch, leads, 2, width)
        patch_out = out[:, 2 * leads :].reshape(batch, leads, n_patches, width)
        return torch.cat([sep_out[:, :, :1], patch_out, sep_out[:, :, 1:]], dim=2).flatten(1, 2)

    def masked_forward(
        self, x: torch.Tensor, *, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pretraining forward: reconstruction and targets (B, T, per_token), masked (B, T) bool."""
        self._check_input(x)
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        tokens = self._embed(x)
        batch, n_tokens, _ = tokens.shape
        n_patches = x.shape[-1] // self.config.patch_size
        n_groups, group_of_token = self._group_of_token(n_tokens, n_patches, x.device)
        kept_groups = sample_kept_groups(batch, n_groups, ratio, generator=generator, device=x.device)
        visible = kept_groups[:, group_of_token]  # (B, T)
        n_visible = int(visible[0].sum())
        # Stable sort puts visible tokens first, in their original order.
        visible_index = (~visible).to(torch.int8).argsort(dim=1, stable=True)[:, :n_visible]
        encoder_in = gather_tokens(tokens, visible_index)
        if self.lead_separators:
            encoder_in = torch.cat(
                [self._separators(batch, n_patches, x.device, tokens.dtype), encoder_in], dim=1
            )
        latent = self.encoder(encoder_in)
        if self.lead_separators:
            latent = latent[:, 2 * self.config.leads :]

        decoded_visible = self.decoder_embed(latent)
        # in the decoder's dtype: under autocast (bf16/fp16 training) the linear output is not float32
        full = self.mask_token.to(decoded_visible.dtype).expand(batch, n_tokens, -1).clone()
        full.scatter_(1, visible_index[..., None].expand(-1, -1, full.shape[-1]), decoded_visible)
        pos = sincos_positions(n_patches, self.config.decoder_width, device=x.device).to(full.dtype)
        if self.tokens == "lead_patches":
            full = (
                full.view(batch, self.config.leads, n_patches, -1) + pos + self.decoder_lead_embed
            ).flatten(1, 2)
        else:
            full = full + pos
        reconstruction = self.decoder_head(self.decoder(full))

        targets = self._patches(x)
        if self.config.norm_target:
            mean = targets.mean(dim=-1, keepdim=True)
            var = targets.var(dim=-1, keepdim=True)
            targets = (targets - mean) / (var + 1e-6).sqrt()
        return reconstruction, targets, ~visible

    def pretrain_loss(
        self,
        x: torch.Tensor,
        *,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """Mean squared error over the masked patches only."""
        reconstruction, targets, masked = self.masked_forward(x, mask_ratio=mask_ratio, generator=generator)
        per_token = (reconstruction - targets).pow(2).mean(dim=-1)
        weights = masked.to(per_token.dtype)
        return (per_token * weights).sum() / weights.sum().clamp_min(1.0)
