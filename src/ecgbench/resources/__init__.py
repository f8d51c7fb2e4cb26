"""Files shipped inside the package: the real sample records (with their licences), templates, recipes."""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent
# Small real samples of the public corpora; see sample/README.md for sources and licences.
SAMPLE_DIR = RESOURCES_DIR / "sample"
# Experiment recipes found by name by `ecgbench run NAME`.
RECIPES_DIR = RESOURCES_DIR / "recipes"
# accelerate config files for `accelerate launch --config_file` (each one launched by a test).
ACCELERATE_DIR = RESOURCES_DIR / "accelerate"
