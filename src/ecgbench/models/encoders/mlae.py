"""MLAE: masked lead autoencoder.

Every lead is its own token sequence (time patches with a lead embedding, as in ST-MEM), but masking
hides whole leads: with the default ratio 9 of 12 leads are reconstructed from the other 3, so the
encoder must learn the spatial relations between leads.
"""

from __future__ import annotations

from ecgbench.models.encoders.masked import MaskedSignalAutoencoder


class MLAE(MaskedSignalAutoencoder):
    name = "mlae"
    tokens = "lead_patches"
    mask_unit = "lead"
