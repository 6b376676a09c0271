"""Lightning callbacks: spectral diagnostics of the polar step, and run records."""

from polar_lightning.callbacks.run_info import RunInfo
from polar_lightning.callbacks.spectral import SpectralDiagnostics

__all__ = ["RunInfo", "SpectralDiagnostics"]
