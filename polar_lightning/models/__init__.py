"""GPT-2 model definitions (plain PyTorch, no optimiser or Lightning dependency)."""

from polar_lightning.models.gpt import GPT, PRESETS, GPTConfig, PresetName, count_parameters

__all__ = ["GPT", "GPTConfig", "PRESETS", "PresetName", "count_parameters"]
