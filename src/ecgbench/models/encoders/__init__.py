"""ECG and vision encoders behind one constructor.

``build_encoder(name, preset="tiny" | "base", checkpoint=None, **options)``:

- ECG encoders "st-mem", "mlae", "mtae" (masked autoencoders) and "merl" (ECG-text contrastive):
  ``preset`` picks the size, ``options`` override config fields (e.g. ``patch_size=75``); ``checkpoint``
  is a directory written by ``save_pretrained``.
- Vision towers "vit", "clip", "siglip", "dinov2": "tiny" is a random-init small config (offline),
  "base" loads the family's default hub weights; ``checkpoint`` is either our checkpoint directory or
  any transformers directory / hub id. Options: ``trainable`` (default False), ``feature_layer``,
  ``representation`` ("image" or "stacked"), ``image_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecgbench.errors import UserError
from ecgbench.models.encoders.base import CONFIG_FILE, ECGEncoder, read_checkpoint_meta

ECG_ENCODERS = ("st-mem", "mlae", "mtae", "merl")
VISION_ENCODERS = ("vit", "clip", "siglip", "dinov2")
ENCODER_NAMES = ECG_ENCODERS + VISION_ENCODERS
PRESETS = ("tiny", "base")


def _ecg_class(name: str) -> type[ECGEncoder]:
    from ecgbench.models.encoders.merl import MERL
    from ecgbench.models.encoders.mlae import MLAE
    from ecgbench.models.encoders.mtae import MTAE
    from ecgbench.models.encoders.stmem import STMEM

    return {"st-mem": STMEM, "mlae": MLAE, "mtae": MTAE, "merl": MERL}[name]


def build_encoder(
    name: str, preset: str = "tiny", checkpoint: str | Path | None = None, **options: Any
) -> ECGEncoder:
    if name not in ENCODER_NAMES:
        raise UserError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_NAMES)}")
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")

    if name in VISION_ENCODERS:
        from ecgbench.models.encoders.vision import VisionEncoder

        if checkpoint is not None and (Path(checkpoint) / CONFIG_FILE).is_file():
            return VisionEncoder.from_pretrained(checkpoint, **options)
        if checkpoint is not None or preset == "base":
            return VisionEncoder.from_hub(name, None if checkpoint is None else str(checkpoint), **options)
        return VisionEncoder.tiny(name, **options)

    cls = _ecg_class(name)
    if checkpoint is not None:
        if options:
            raise UserError(f"options {', '.join(sorted(options))} cannot change a saved {name} checkpoint")
        return cls.from_pretrained(checkpoint)
    if name == "merl":
        from ecgbench.models.encoders.merl import preset_config as merl_preset

        return cls(merl_preset(preset, **options))
    from ecgbench.models.encoders.masked import preset_config

    return cls(preset_config(preset, **options))  # type: ignore[call-arg]


def load_encoder(directory: str | Path, **options: Any) -> ECGEncoder:
    """Any encoder checkpoint directory written by ``save_pretrained``; the name comes from encoder.json."""
    meta = read_checkpoint_meta(Path(directory))
    if meta["encoder"] not in ENCODER_NAMES:
        raise UserError(f"{directory} holds an unknown encoder {meta['encoder']!r}")
    return build_encoder(meta["encoder"], checkpoint=directory, **options)


__all__ = ["ENCODER_NAMES", "ECGEncoder", "build_encoder", "load_encoder"]
