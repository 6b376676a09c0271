"""Polar Express and its peers: optimal coefficients and polar iterations (pure PyTorch / NumPy)."""

from polar_lightning.polar.coefficients import (
    NEWTON_SCHULZ_LIMITS,
    apply_polynomials,
    optimal_coefficients,
    remez_odd,
    with_safety,
)
from polar_lightning.polar.iterations import (
    FORMS,
    METHOD_NAMES,
    PolarMethod,
    multiply_adds,
    orthogonalize,
    orthogonalize_many,
    polar_coefficients,
    polar_iterates,
    polar_method,
)

__all__ = [
    "FORMS",
    "METHOD_NAMES",
    "NEWTON_SCHULZ_LIMITS",
    "PolarMethod",
    "apply_polynomials",
    "optimal_coefficients",
    "orthogonalize",
    "multiply_adds",
    "orthogonalize_many",
    "polar_coefficients",
    "polar_iterates",
    "polar_method",
    "remez_odd",
    "with_safety",
]
