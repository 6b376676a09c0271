"""Learning-rate multipliers for torch.optim.lr_scheduler.LambdaLR.

They are small classes with ``__call__`` rather than closures so that LambdaLR's state (and with it a
Lightning checkpoint) can pickle them. LambdaLR multiplies each group's own initial lr, so Muon's and
AdamW's different learning rates follow the same shape.
"""

from __future__ import annotations

import math


def _check_steps(warmup_steps: int, total_steps: int) -> None:
    for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps!r}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} exceeds total_steps={total_steps}")


def _warmup(step: int, warmup_steps: int) -> float:
    """Linear warmup from 1/warmup_steps at step 0 to 1 at step warmup_steps - 1."""
    return (step + 1) / warmup_steps


class warmup_constant_decay:  # noqa: N801 - used like a function factory: warmup_constant_decay(...)
    """Linear warmup, constant, then linear decay to 0 at ``total_steps``.

    Polar Express paper GPT-2 runs (arXiv 2505.16932): lr constant for the first 40% of the steps, then
    linear decay to 0, hence ``constant_fraction=0.4``. The constant phase covers the warmup too: decay
    starts at step ``max(warmup_steps, constant_fraction * total_steps)``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, constant_fraction: float = 0.4) -> None:
        _check_steps(warmup_steps, total_steps)
        if isinstance(constant_fraction, bool) or not 0.0 <= constant_fraction <= 1.0:
            raise ValueError(f"constant_fraction must lie in [0, 1], got {constant_fraction!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.constant_fraction = float(constant_fraction)
        self.decay_start = max(warmup_steps, round(constant_fraction * total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        if step < self.decay_start:
            return 1.0
        if step >= self.total_steps:
            return 0.0
        return (self.total_steps - step) / (self.total_steps - self.decay_start)

    def __repr__(self) -> str:
        return (
            f"warmup_constant_decay(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"constant_fraction={self.constant_fraction})"
        )


class warmup_cosine:  # noqa: N801 - used like a function factory
    """Linear warmup, then cosine decay from 1 to ``min_ratio`` at ``total_steps`` (Loshchilov & Hutter,
    SGDR, ICLR 2017, without restarts)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        _check_steps(warmup_steps, total_steps)
        if isinstance(min_ratio, bool) or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio!r}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.warmup_steps)
        if step >= self.total_steps:
            return self.min_ratio
        span = max(1, self.total_steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / span
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (
            f"warmup_cosine(warmup_steps={self.warmup_steps}, total_steps={self.total_steps}, "
            f"min_ratio={self.min_ratio})"
        )
