"""The Muon (Polar Express) / AdamW hybrid optimizer, its parameter routing and lr schedules."""

from polar_lightning.optim.muon_adamw import (
    MuonAdamW,
    adamw_update_,
    matrix_blocks,
    muon_momentum,
    shape_factor,
)
from polar_lightning.optim.param_groups import ParamRule, muon_param_groups
from polar_lightning.optim.schedules import warmup_constant_decay, warmup_cosine

__all__ = [
    "MuonAdamW",
    "ParamRule",
    "adamw_update_",
    "matrix_blocks",
    "muon_momentum",
    "muon_param_groups",
    "shape_factor",
    "warmup_constant_decay",
    "warmup_cosine",
]
