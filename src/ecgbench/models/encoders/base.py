"""The contract every ECG or vision encoder meets, so ELMs can use any of them interchangeably.

Checkpoints are a directory holding ``encoder.json`` (encoder name, format version and the config that
rebuilds the architecture) and ``model.safetensors`` (the weights): no pickle anywhere.
"""

from __future__ import annotations

import json
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write, read_folder_document

CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FORMAT = "ecgbench-encoder"
CHECKPOINT_VERSION = 1


class ECGEncoder(nn.Module, metaclass=ABCMeta):
    """An encoder that turns one input representation into a sequence of feature vectors.

    What callers may use, for every encoder (ECG encoders and vision towers alike):

    - ``features(x)``: the feature-extraction forward used inside ELMs: deterministic, never masked
      (masking belongs to pretraining only);
    - ``set_trainable(flag)``: whether training updates the encoder (a frozen one gets no gradients);
    - ``pretrain_loss(x, texts=..., generator=...)``: the loss of the encoder's own pretraining objective,
      for the encoders that have one (``objective`` names it: the masked autoencoders, MERL); the vision
      towers have none (``objective`` is None) and their ``pretrain_loss`` is a clear error;
    - ``save_pretrained`` / ``from_pretrained``: a checkpoint folder.
    """

    #: registry name written into ``encoder.json`` ("st-mem", "clip", ...)
    name: ClassVar[str] = ""
    #: the encoder's own pretraining objective, or None when it has none (the vision towers)
    objective: ClassVar[str | None] = None
    #: width of each feature vector returned by ``features``
    out_dim: int
    #: "signal" (B, 12, L) float, "stacked" or "image" (B, 3, H, W) float
    representation: str

    @abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, tokens, out_dim)
        """Feature tokens of a batch, never masked."""

    def set_trainable(self, trainable: bool) -> None:
        """Let training update every parameter, or none (requires_grad on or off)."""
        self.requires_grad_(trainable)

    def pretrain_loss(
        self,
        x: torch.Tensor,
        *,
        texts: list[str] | None = None,
        generator: torch.Generator | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """The scalar loss of the encoder's own pretraining objective on a batch (``texts``: one report
        per ECG, for contrastive objectives; ``generator``: the masking randomness)."""
        raise UserError(f"the {self.name} encoder has no pretraining objective of its own")

    # -- checkpoints ---------------------------------------------------------------------------

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings that rebuild this architecture (without weights)."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any], directory: Path | None = None) -> Self:
        """A randomly initialised encoder from ``config_dict()``; ``directory`` holds extra files."""

    def save_extra(self, directory: Path) -> None:
        """Files besides the weights a subclass needs to rebuild itself (e.g. a text tokenizer)."""

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_extra(directory)
        # Weights first, config last: a folder with a config always has the weights it describes.
        atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_model(self, str(tmp)))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "encoder": self.name,
            "config": self.config_dict(),
        }
        document = json.dumps(meta, indent=2) + "\n"
        atomic_write(directory / CONFIG_FILE, lambda tmp: tmp.write_text(document, encoding="utf-8"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Self:
        directory = Path(directory)
        meta = read_checkpoint_meta(directory)
        if meta["encoder"] != cls.name:
            raise UserError(f"{directory} holds a {meta['encoder']!r} encoder, not {cls.name!r}")
        model = cls.from_config(meta["config"], directory)
        load_weights(model, directory)
        return model


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """The parsed ``encoder.json`` of a checkpoint directory, validated."""
    meta = read_folder_document(
        directory, CONFIG_FILE, kind="encoder checkpoint", fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION
    )
    if not isinstance(meta.get("encoder"), str) or not isinstance(meta.get("config"), dict):
        raise CorruptFileError(f"{directory / CONFIG_FILE} lacks the 'encoder' name or the 'config' table")
    return meta


def load_weights(model: nn.Module, directory: Path) -> None:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"encoder weights not found: {path}")
    try:
        load_model(model, str(path), strict=True)
    except SafetensorError as exc:
        raise CorruptFileError(f"{path} is not a readable safetensors file: {exc}") from None
    except RuntimeError as exc:
        # Missing/unexpected keys or shape mismatches: the weights do not belong to this config.
        first = str(exc).strip().splitlines()
        raise CorruptFileError(f"{path} does not match its {CONFIG_FILE}: {' '.join(first[:3])}") from None
