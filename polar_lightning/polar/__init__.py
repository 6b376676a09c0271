"""Polar Express and its peers: optimal coefficients and polar iterations (pure PyTorch / NumPy)."""

from polar_lightning.polar.iterations import (
    METHOD_NAMES,
    PolarMethod,
    orthogonalize,
    polar_coefficients,
    polar_method,
)

__all__ = [
    "METHOD_NAMES",
    "PolarMethod",
    "optimal_coefficients",
    "orthogonalize",
    "polar_coefficients",
    "polar_method",
]


def __getattr__(name: str):
    # coefficients.py is written separately; resolve it lazily so the package imports without it.
    if name == "optimal_coefficients":
        from polar_lightning.polar.coefficients import optimal_coefficients

        return optimal_coefficients
    raise AttributeError(f"module 'polar_lightning.polar' has no attribute {name!r}")
