"""SpectralDiagnostics: what the optimizer does to each weight matrix, seen during training.

Every ``every_n_steps`` optimizer steps the callback records, for each tracked matrix ``W``, the
gradient and the weight just before ``optimizer.step()`` (``on_before_optimizer_step``) and the
weight right after it (``on_train_batch_end``), so ``dW = W_after - W_before`` is the update actually
applied (learning rate, schedule and weight decay included). Statistics come from
:mod:`polar_lightning.callbacks.spectral_stats` and are logged to every attached logger as
``spectral/<param name>/<stat>``:

=======================  ==========================================================================
``update_sv_max/min``    largest / smallest singular value of dW
``stable_rank``          ||dW||_F^2 / ||dW||_2^2
``effective_rank``       exp of the entropy of s / sum(s) of dW (Roy & Vetterli 2007)
``update_rms_ratio``     rms(dW) / rms(W)
``grad_stable_rank``     stable rank of the gradient (before gradient clipping)
``grad_effective_rank``  effective rank of the gradient
``weight_spectral_norm`` ||W||_2 after the step
``alpha``                power-law tail exponent of the eigenvalues of W^T W (Clauset et al. 2009)
``polar_err_max/median`` only with an optimizer that records its polar step (MuonAdamW): max and
                         median of |s_i - 1| of the orthogonalised update over the momentum's
                         singular directions above ``polar_threshold`` of its largest
=======================  ==========================================================================

plus ``spectral/seconds``, the wall time the callback spent on that step.

Optimizer contract for the polar error: an optimizer with a ``record_polar_updates`` attribute gets
it set to True before a sampled step and False after; it then exposes ``polar_updates``, a
``dict[Parameter, (input, output)]`` of float32 ``(blocks, r, c)`` tensors (MuonAdamW does this).

Distributed: DTensor parameters and gradients are gathered with ``full_tensor()`` on every rank in
the same order (the collective needs all of them); only global rank 0 keeps the copies, computes
and logs. Nothing else communicates: the log dir is read from the logger on rank 0 without
``trainer.log_dir`` (which broadcasts). Polar updates are read only where the optimizer stored them
(a sharded optimizer's other ranks' parameters are not reported).
"""

from __future__ import annotations

import os
import re
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import Tensor

from polar_lightning.callbacks import spectral_plots
from polar_lightning.callbacks.spectral_stats import (
    POLAR_RELATIVE_THRESHOLD,
    SV_METHODS,
    effective_rank,
    polar_error_stats,
    power_law_alpha,
    projected_polar_values,
    singular_values,
    stable_rank,
    update_rms_ratio,
)

# Default sampling interval: the smallest one within 3% of training time on the project's 2-core CPU
# (recipes/spectral_overhead/RESULTS.md: gpt2-tiny, 256 tokens/step, 2.1% at 200, 4.3% at 100).
DEFAULT_EVERY_N_STEPS = 200


def _unwrap(optimizer: Any) -> Any:
    """The torch optimizer behind Lightning's wrapper (attributes set on the wrapper do not stick)."""
    return optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def _full(t: Tensor | None) -> Tensor | None:
    """Gather a DTensor (a collective: call on every rank in the same order); plain tensors pass."""
    if t is None:
        return None
    gather = getattr(t, "full_tensor", None)
    return gather() if callable(gather) else t


def _is_dtensor(t: Any) -> bool:
    return callable(getattr(t, "full_tensor", None))


class SpectralDiagnostics(Callback):
    """Log spectral statistics of weights, updates and gradients; plot them as PNG.

    Works with any LightningModule and any optimizer; with MuonAdamW it also logs the polar error of
    the orthogonalised update. See the module docstring for the metric names.

    Args:
        every_n_steps: sample one optimizer step in this many (the first step is always sampled).
            Default measured in recipes/spectral_overhead (<= 3% of training time on CPU).
        include: regular expression; only parameters whose name matches (``re.search``) are tracked.
            Default: every parameter with >= 2 dims that requires grad.
        exclude: regular expression of parameter names to skip (applied after ``include``).
        subsample: track at most this many matrices, evenly spaced in the model's parameter order
            (first and last included), to cut cost on deep models.
        polar_threshold: directions of the polar input (momentum) below this fraction of its largest
            singular value are left out of the polar error (1e-3: Polar Express's lower bound l).
        compute_alpha: fit the power-law exponent of each weight's spectrum.
        histograms: with a TensorBoard logger, add histograms of the update's singular values.
        plots: write PNG plots into ``<log dir>/spectral/`` at the end of fit.
        plot_every_n_validations: also write them after every N-th validation run (0: never).
        sv_method: how singular values of weights, updates and gradients are computed: "gram"
            (eigenvalues of the smaller Gram matrix, float32, fast; resolves s down to ~3e-4 of the
            largest) or "svd" (``torch.linalg.svdvals``, float32, exact, 20-50x slower on CPU).
    """

    def __init__(
        self,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        include: str | None = None,
        exclude: str | None = None,
        subsample: int | None = None,
        polar_threshold: float = POLAR_RELATIVE_THRESHOLD,
        compute_alpha: bool = True,
        histograms: bool = True,
        plots: bool = True,
        plot_every_n_validations: int = 0,
        sv_method: str = "gram",
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if subsample is not None and subsample < 1:
            raise ValueError(f"subsample must be None or >= 1, got {subsample}")
        if not 0.0 < polar_threshold < 1.0:
            raise ValueError(f"polar_threshold must be in (0, 1), got {polar_threshold}")
        if plot_every_n_validations < 0:
            raise ValueError(f"plot_every_n_validations must be >= 0, got {plot_every_n_validations}")
        if sv_method not in SV_METHODS:
            raise ValueError(f"sv_method must be one of {SV_METHODS}, got {sv_method!r}")
        for label, pattern in (("include", include), ("exclude", exclude)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{label}={pattern!r} is not a regular expression: {err}") from err
        self.every_n_steps = every_n_steps
        self.include = include
        self.exclude = exclude
        self.subsample = subsample
        self.polar_threshold = polar_threshold
        self.compute_alpha = compute_alpha
        self.histograms = histograms
        self.plots = plots
        self.plot_every_n_validations = plot_every_n_validations
        self.sv_method = sv_method

        self._tracked: list[tuple[str, torch.nn.Parameter]] = []
        self._names: dict[int, str] = {}  # id(param) -> name
        self._reset_pending()
        self.history = spectral_plots.History()
        self._validations = 0
        self._warned_dtensor_polar = False

    # ----------------------------------------------------------------------------- selection
    def select_parameters(self, module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """Tracked (name, parameter) pairs: >= 2-D, requires grad, filtered, subsampled."""
        chosen = []
        for name, p in module.named_parameters():
            if p.dim() < 2 or not p.requires_grad:
                continue
            if self.include is not None and re.search(self.include, name) is None:
                continue
            if self.exclude is not None and re.search(self.exclude, name) is not None:
                continue
            chosen.append((name, p))
        if self.subsample is not None and len(chosen) > self.subsample:
            if self.subsample == 1:
                chosen = chosen[:1]
            else:
                last = len(chosen) - 1
                picks = sorted({round(i * last / (self.subsample - 1)) for i in range(self.subsample)})
                chosen = [chosen[i] for i in picks]
        return chosen

    def is_sampled(self, step: int) -> bool:
        """Whether the optimizer step that starts at ``global_step == step`` is sampled."""
        return step == 0 or (step + 1) % self.every_n_steps == 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._tracked = []  # parameters may be replaced (configure_model, FSDP2): select on fit start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracked = self.select_parameters(pl_module)
        self._names = {id(p): name for name, p in self._tracked}
        if not self._tracked:
            warnings.warn(
                f"SpectralDiagnostics tracks no parameter (include={self.include!r}, "
                f"exclude={self.exclude!r})",
                stacklevel=2,
            )

    # ----------------------------------------------------------------------------- capture
    def _reset_pending(self) -> None:
        self._pending = False
        self._decided_step: int | None = None
        self._captured: list[str] = []  # names, identical on every rank (drives the collectives)
        self._before: dict[str, Tensor] = {}  # rank 0 only
        self._grad_stats: dict[str, dict[str, float]] = {}  # rank 0 only
        self._recording: list[Any] = []  # optimizers asked to record their polar step
        self._elapsed = 0.0

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        step = trainer.global_step
        if self._decided_step != step:
            if self._pending:  # a previous sample's batch never ended (e.g. manual loop): drop it
                self._reset_pending()
            self._decided_step = step
            self._pending = self.is_sampled(step)
        if not self._pending:
            return
        start = time.perf_counter()
        opt = _unwrap(optimizer)
        in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
        rank0 = trainer.is_global_zero
        for name, p in self._tracked:
            if id(p) not in in_opt or name in self._captured:
                continue
            self._captured.append(name)
            weight = _full(p.detach())  # every rank: DTensor gather is a collective
            grad = _full(p.grad.detach()) if p.grad is not None else None
            if not rank0:
                continue
            self._before[name] = weight.detach().clone()
            if grad is not None:
                s = singular_values(grad, self.sv_method)
                self._grad_stats[name] = {
                    "grad_stable_rank": stable_rank(s),
                    "grad_effective_rank": effective_rank(s),
                }
        if hasattr(opt, "record_polar_updates"):
            # Every rank, so an optimizer that communicates while recording stays in lockstep.
            opt.record_polar_updates = True
            self._recording.append(opt)
        self._elapsed += time.perf_counter() - start

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._pending or not self._captured:
            if self._pending:
                self._reset_pending()
            return
        start = time.perf_counter()
        rank0 = trainer.is_global_zero
        params = dict(self._tracked)
        metrics: dict[str, float] = {}
        snapshots: dict[str, Tensor] = {}
        polar_snapshots: dict[str, Tensor] = {}
        for name in self._captured:
            after = _full(params[name].detach())  # every rank, same order as the capture
            if not rank0:
                continue
            before = self._before.pop(name)
            stats, s_update = self._update_stats(before, after)
            stats.update(self._grad_stats.get(name, {}))
            metrics.update({f"spectral/{name}/{k}": v for k, v in stats.items()})
            snapshots[name] = s_update.cpu()
        for opt in self._recording:
            opt.record_polar_updates = False
            if not rank0:
                continue
            for p, (inp, out) in getattr(opt, "polar_updates", {}).items():
                name = self._names.get(id(p))
                if name is None:
                    continue
                if _is_dtensor(inp) or _is_dtensor(out):
                    if not self._warned_dtensor_polar:
                        warnings.warn("polar_updates holds DTensors: polar error skipped", stacklevel=2)
                        self._warned_dtensor_polar = True
                    continue
                err = polar_error_stats(inp, out, self.polar_threshold)
                metrics[f"spectral/{name}/polar_err_max"] = err.max
                metrics[f"spectral/{name}/polar_err_median"] = err.median
                vals = projected_polar_values(inp, out, self.polar_threshold)
                polar_snapshots[name] = torch.cat(vals).cpu() if vals else torch.zeros(0)
        step = trainer.global_step
        if rank0:
            self._elapsed += time.perf_counter() - start
            metrics["spectral/seconds"] = self._elapsed
            self.history.add(step, metrics, snapshots, polar_snapshots)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
                if self.histograms and isinstance(logger, TensorBoardLogger):
                    for name, s in snapshots.items():
                        logger.experiment.add_histogram(f"spectral/{name}/update_sv", s, step)
        self._reset_pending()

    def _update_stats(self, before: Tensor, after: Tensor) -> tuple[dict[str, float], Tensor]:
        """Scale-free statistics of dW and the weight; returns them and dW's singular values."""
        after32 = after.detach().float()
        update = after32 - before.float()  # same shape as the parameter
        s_update = singular_values(update, self.sv_method)
        s_weight = singular_values(after32, self.sv_method)
        stats = {
            "update_sv_max": float(s_update.max()),
            "update_sv_min": float(s_update.min()),
            "stable_rank": stable_rank(s_update),
            "effective_rank": effective_rank(s_update),
            "update_rms_ratio": update_rms_ratio(update, after32),
            "weight_spectral_norm": float(s_weight.max()),
        }
        if self.compute_alpha:
            stats["alpha"] = power_law_alpha(s_weight.double().square()).alpha
        return stats, s_update

    # ----------------------------------------------------------------------------- plots
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.plot_every_n_validations == 0:
            return
        self._validations += 1
        if self._validations % self.plot_every_n_validations == 0:
            self._plot(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._plot(trainer)

    def plot_dir(self, trainer: pl.Trainer) -> str:
        """``<log dir>/spectral``, resolved like ``trainer.log_dir`` but without its broadcast."""
        if trainer.loggers:
            first = trainer.loggers[0]
            base = first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
        else:
            base = None
        return os.path.join(base or trainer.default_root_dir, "spectral")

    def _plot(self, trainer: pl.Trainer) -> list[str]:
        if not self.plots or not trainer.is_global_zero or not self.history.steps:
            return []
        paths = spectral_plots.write_all(self.history, self.plot_dir(trainer))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for path in paths:
                    tag = "spectral/" + os.path.splitext(os.path.basename(path))[0]
                    logger.experiment.add_image(
                        tag, spectral_plots.read_png(path), trainer.global_step, dataformats="HWC"
                    )
        return paths

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations, "history": self.history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = int(state_dict.get("validations", 0))
        if "history" in state_dict:
            self.history.load_state_dict(state_dict["history"])


__all__ = ["DEFAULT_EVERY_N_STEPS", "SpectralDiagnostics"]
