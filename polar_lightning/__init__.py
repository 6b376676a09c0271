"""polar_lightning: Polar Express, the Muon/AdamW hybrid optimizer and GPT-2 recipes for Lightning.

Top-level names are resolved lazily so that ``import polar_lightning`` does no work and
``polar_lightning.polar`` stays usable without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it (imports flow cli -> module/data/callbacks -> optim -> polar).
_EXPORTS = {
    "optimal_coefficients": "polar_lightning.polar",
    "orthogonalize": "polar_lightning.polar",
    "MuonAdamW": "polar_lightning.optim",
    "muon_param_groups": "polar_lightning.optim",
    "FineWebDataModule": "polar_lightning.data",
    "GPT": "polar_lightning.models",
    "GPTConfig": "polar_lightning.models",
    "GPT2Module": "polar_lightning.module",
    "SpectralDiagnostics": "polar_lightning.callbacks",
}

__all__ = [
    "GPT",
    "GPT2Module",
    "GPTConfig",
    "FineWebDataModule",
    "MuonAdamW",
    "SpectralDiagnostics",
    "muon_param_groups",
    "optimal_coefficients",
    "orthogonalize",
]

if TYPE_CHECKING:
    from polar_lightning.callbacks import SpectralDiagnostics
    from polar_lightning.data import FineWebDataModule
    from polar_lightning.models import GPT, GPTConfig
    from polar_lightning.module import GPT2Module
    from polar_lightning.optim import MuonAdamW, muon_param_groups
    from polar_lightning.polar import optimal_coefficients, orthogonalize


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polar_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
