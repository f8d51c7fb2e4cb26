"""ST-MEM: spatio-temporal masked electrocardiogram modeling (Na et al., ICLR 2024).

Each lead is cut into time patches; a patch token carries a temporal position and a lead embedding;
every lead is framed by SEP tokens at its start and end; 75 % of the patch tokens are masked at random
and an MAE decoder reconstructs their samples.
"""

from __future__ import annotations

from ecgbench.models.encoders.masked import MaskedSignalAutoencoder


class STMEM(MaskedSignalAutoencoder):
    name = "st-mem"
    tokens = "lead_patches"
    mask_unit = "token"
    lead_separators = True
