"""MTAE: masked time autoencoder.

A token is one time window across all 12 leads; random windows are masked and reconstructed from the
others, so the encoder must learn the temporal structure of the beat sequence.
"""

from __future__ import annotations

from ecgbench.models.encoders.masked import MaskedSignalAutoencoder


class MTAE(MaskedSignalAutoencoder):
    name = "mtae"
    tokens = "time_patches"
    mask_unit = "token"
