"""General vision encoders from transformers (ViT, CLIP and SigLIP vision towers, DINOv2) as ECGEncoders.

Input: images (B, 3, H, W) in [0, 1] as made by ``ecgbench.models.inputs`` ("image" or "stacked"). The
wrapper resizes them to the tower's size (anti-aliased) and applies the family's normalisation
constants (from the checkpoint's ``preprocessor_config.json`` when there is one). Output: the patch
tokens (B, tokens, hidden) of the last layer (or of ``feature_layer``), never masked.

Frozen by default: ``requires_grad`` is switched off on the tower's parameters (and dropout kept off),
which is all freezing needs. ``trainable=True`` leaves them on so gradients flow; nothing here wraps
the forward in ``torch.no_grad``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F

from ecgbench.errors import UserError
from ecgbench.models.encoders.base import ECGEncoder, load_weights, read_checkpoint_meta


@dataclass(frozen=True)
class VisionFamily:
    model_class: str  # transformers class name
    config_class: str
    hub_id: str  # default weights for the "base" preset
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prefix_tokens: int  # CLS tokens before the patch tokens
    tiny: dict[str, Any]


_TINY = {
    "image_size": 224,
    "patch_size": 16,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

FAMILIES: dict[str, VisionFamily] = {
    "vit": VisionFamily(
        "ViTModel",
        "ViTConfig",
        "google/vit-base-patch16-224-in21k",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        1,
        _TINY,
    ),
    "clip": VisionFamily(
        "CLIPVisionModel", "CLIPVisionConfig", "openai/clip-vit-base-patch16", _CLIP_MEAN, _CLIP_STD, 1, _TINY
    ),
    "siglip": VisionFamily(
        "SiglipVisionModel",
        "SiglipVisionConfig",
        "google/siglip-base-patch16-224",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        0,
        _TINY,
    ),
    "dinov2": VisionFamily(
        "Dinov2Model", "Dinov2Config", "facebook/dinov2-base", _IMAGENET_MEAN, _IMAGENET_STD, 1, _TINY
    ),
}


def _transformers_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _preprocessor_constants(source: str) -> tuple[list[float], list[float]] | None:
    """image_mean / image_std from a local checkpoint's preprocessor_config.json, if present."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return list(values["image_mean"]), list(values["image_std"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _tower_kwargs(family: str) -> dict[str, Any]:
    # ViTModel adds a pooler by default; features never use it, and unused params would get no grads.
    return {"add_pooling_layer": False} if family == "vit" else {}


class VisionEncoder(ECGEncoder):
    """A transformers vision tower with ECGbench's feature contract."""

    def __init__(
        self,
        family: str,
        tower: torch.nn.Module,
        *,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        trainable: bool = False,
        feature_layer: int | None = None,
        representation: str = "image",
        image_size: int | None = None,
    ):
        super().__init__()
        if family not in FAMILIES:
            raise UserError(f"unknown vision family {family!r}; choose one of {', '.join(FAMILIES)}")
        if representation not in ("image", "stacked"):
            raise UserError(f"vision encoders read 'image' or 'stacked' inputs, not {representation!r}")
        self.family = family
        self.tower = tower
        self.representation = representation
        self.feature_layer = feature_layer
        self.out_dim = int(tower.config.hidden_size)
        # DINOv2 checkpoints declare 518 but are used at 224 (their processor crops to 224 and the model
        # interpolates its position table); the other towers have a fixed input size.
        default_size = 224 if family == "dinov2" else int(tower.config.image_size)
        self.image_size = int(image_size or default_size)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.set_trainable(trainable)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.family

    def set_trainable(self, trainable: bool) -> None:
        """Train the tower (its parameters that the patch features use) or freeze it in eval mode."""
        self.trainable = trainable
        for param in self.tower.parameters():
            param.requires_grad_(trainable)
        if trainable:
            self._freeze_unused()
        self.train(self.training)

    def _freeze_unused(self) -> None:
        """Keep frozen what the patch features never touch (CLIP's post-layernorm, SigLIP's pooling head,
        DINOv2's mask token, layers above ``feature_layer``): found with one backward pass on a blank
        image, so distributed training sees no trainable parameter without a gradient."""
        params = [p for p in self.tower.parameters() if p.requires_grad]
        with torch.enable_grad():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.mean.device)
            used = torch.autograd.grad(
                self.features(probe).sum(), params, allow_unused=True, materialize_grads=False
            )
        for param, grad in zip(params, used, strict=True):
            if grad is None:
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        if not self.trainable:
            self.tower.eval()  # a frozen tower keeps dropout and the like off
        return self

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def tiny(cls, family: str, **options: Any) -> Self:
        spec = _family(family)
        config = _transformers_class(spec.config_class)(**spec.tiny)
        tower = _transformers_class(spec.model_class)(config, **_tower_kwargs(family))
        return cls(family, tower, mean=spec.mean, std=spec.std, **options)

    @classmethod
    def from_hub(cls, family: str, source: str | None = None, **options: Any) -> Self:
        """Pretrained weights from a hub id or a local transformers directory."""
        spec = _family(family)
        source = source or spec.hub_id
        model_class = _transformers_class(spec.model_class)
        try:
            tower = model_class.from_pretrained(source, **_tower_kwargs(family))
        except OSError as exc:
            raise UserError(
                f"cannot load {family} weights from {source!r}: {str(exc).splitlines()[0]}"
            ) from None
        mean, std = _preprocessor_constants(source) or (spec.mean, spec.std)
        return cls(family, tower, mean=mean, std=std, **options)

    def config_dict(self) -> dict[str, Any]:
        tower_config = {k: v for k, v in self.tower.config.to_dict().items() if not k.startswith("_")}
        return {
            "family": self.family,
            "tower_config": tower_config,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "feature_layer": self.feature_layer,
            "representation": self.representation,
            "image_size": self.image_size,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: Path | None = None, **options: Any) -> Self:
        spec = _family(config["family"])
        tower_config = _transformers_class(spec.config_class).from_dict(config["tower_config"])
        tower = _transformers_class(spec.model_class)(tower_config, **_tower_kwargs(config["family"]))
        kwargs = {
            "feature_layer": config.get("feature_layer"),
            "representation": config.get("representation", "image"),
            "image_size": config.get("image_size"),
        }
        kwargs.update(options)
        return cls(config["family"], tower, mean=config["mean"], std=config["std"], **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **options: Any) -> Self:  # type: ignore[override]
        directory = Path(directory)
        meta = read_checkpoint_meta(directory)
        if meta["encoder"] not in FAMILIES:
            raise UserError(f"{directory} holds a {meta['encoder']!r} encoder, not a vision tower")
        model = cls.from_config(meta["config"], directory, **options)
        load_weights(model, directory)
        return model

    # -- forward ------------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> the tower's size and normalisation."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"{self.family} expects images (B, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (images - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, (image_size / patch)^2, hidden); CLS tokens dropped, no masking."""
        pixel_values = self.preprocess(x).to(next(self.tower.parameters()).dtype)
        hidden_states = self.feature_layer is not None
        out = self.tower(pixel_values=pixel_values, output_hidden_states=hidden_states)
        tokens = out.hidden_states[self.feature_layer] if hidden_states else out.last_hidden_state
        return tokens[:, FAMILIES[self.family].prefix_tokens :]


def _family(name: str) -> VisionFamily:
    if name not in FAMILIES:
        raise UserError(f"unknown vision family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
