"""History and PNG plots for SpectralDiagnostics (matplotlib, Agg backend, no pyplot state kept)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

# At most this many snapshot steps drawn per panel: more curves stop being readable.
MAX_CURVES = 4
# Floor for log-scale singular values relative to the largest (fp32 SVD noise is ~1e-7 of s_max).
REL_FLOOR = 1e-6


def layer_type(name: str) -> str:
    """Parameter name without layer indices and the ``.weight`` suffix: ``h.3.attn.c_attn.weight``
    -> ``h.attn.c_attn``, so every block's copy of a matrix shares one type."""
    stripped = re.sub(r"(^|\.)\d+(?=\.|$)", "", name)
    return re.sub(r"\.weight$", "", stripped) or name


@dataclass
class History:
    """Logged metrics of every sample, and singular-value snapshots at a few samples.

    Snapshots are kept at sample 0, at every power-of-two sample index (1, 2, 4, ...) and at the
    latest one, so memory grows with the log of the run's length.
    """

    steps: list[int] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    update_sv: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    polar_sv: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    @staticmethod
    def _keeper(index: int) -> bool:
        return index == 0 or (index & (index - 1)) == 0

    def add(
        self,
        step: int,
        metrics: dict[str, float],
        update_sv: dict[str, Tensor],
        polar_sv: dict[str, Tensor] | None = None,
    ) -> None:
        """Append one sample; drop the previous sample's snapshots unless it is a keeper."""
        index = len(self.steps)
        if index > 0 and not self._keeper(index - 1):
            self.update_sv.pop(self.steps[-1], None)
            self.polar_sv.pop(self.steps[-1], None)
        self.steps.append(int(step))
        self.metrics.append(dict(metrics))
        self.update_sv[int(step)] = {k: v.detach().float().cpu() for k, v in update_sv.items()}
        if polar_sv:
            self.polar_sv[int(step)] = {k: v.detach().float().cpu() for k, v in polar_sv.items()}

    def series(self, stat: str) -> dict[str, tuple[list[int], list[float]]]:
        """``{param name: (steps, values)}`` for metric ``spectral/<name>/<stat>``."""
        out: dict[str, tuple[list[int], list[float]]] = {}
        suffix = "/" + stat
        for step, row in zip(self.steps, self.metrics, strict=True):
            for key, value in row.items():
                if key.startswith("spectral/") and key.endswith(suffix):
                    name = key[len("spectral/") : -len(suffix)]
                    xs, ys = out.setdefault(name, ([], []))
                    xs.append(step)
                    ys.append(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "metrics": [dict(m) for m in self.metrics],
            "update_sv": {s: dict(d) for s, d in self.update_sv.items()},
            "polar_sv": {s: dict(d) for s, d in self.polar_sv.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [int(s) for s in state["steps"]]
        self.metrics = [dict(m) for m in state["metrics"]]
        self.update_sv = {int(s): dict(d) for s, d in state["update_sv"].items()}
        self.polar_sv = {int(s): dict(d) for s, d in state.get("polar_sv", {}).items()}


def _pick(steps: list[int], k: int = MAX_CURVES) -> list[int]:
    """Up to ``k`` of the sorted steps, first and last included, evenly spread in index."""
    steps = sorted(steps)
    if len(steps) <= k:
        return steps
    return sorted({steps[round(i * (len(steps) - 1) / (k - 1))] for i in range(k)})


def _by_type(names: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(layer_type(name), []).append(name)
    return groups


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def _figure(rows: int, cols: int) -> Any:
    from matplotlib.figure import Figure  # no pyplot: nothing global, safe off the main thread

    return Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")


def _median_curve(vectors: list[Tensor], normalise: bool) -> np.ndarray:
    """Median over layers of sorted (optionally s / s_max) vectors of equal length."""
    rows = []
    for v in vectors:
        v = torch.sort(v.flatten(), descending=True).values
        if normalise:
            v = v / v[0].clamp_min(torch.finfo(v.dtype).tiny)
        rows.append(v.numpy())
    length = min(len(r) for r in rows)
    return np.median(np.stack([r[:length] for r in rows]), axis=0)


def _plot_per_layer_type(
    per_step: dict[int, dict[str, Any]],
    path: str,
    curve: Any,
    *,
    log_y: bool,
    reference: float | None,
    xlabel: str,
    ylabel: str,
    title: str,
) -> str | None:
    """One panel per layer type, one line per picked step: ``curve(vectors)`` of that type's layers."""
    steps = _pick(list(per_step))
    if not steps:
        return None
    groups = _by_type(sorted({n for s in steps for n in per_step[s]}))
    rows, cols = _grid(len(groups))
    fig = _figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    cmap = fig.colormaps["viridis"] if hasattr(fig, "colormaps") else None
    for ax, (ltype, names) in zip(axes, groups.items(), strict=False):
        for i, step in enumerate(steps):
            vecs = [per_step[step][n] for n in names if per_step[step].get(n) is not None]
            vecs = [v for v in vecs if v.numel() > 0]
            if not vecs:
                continue
            y = curve(vecs)
            ax.plot(np.linspace(0.0, 1.0, len(y)), y, color=_color(i, len(steps), cmap), label=f"step {step}")
        if log_y:
            ax.set_yscale("log")
        if reference is not None:
            ax.axhline(reference, color="black", lw=0.8, ls="--")
        ax.set_title(f"{ltype} ({len(names)})", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_update_spectra(history: History, path: str) -> str | None:
    """Per layer type: the update's singular values s_i / s_1 (median over layers) at a few steps."""
    return _plot_per_layer_type(
        history.update_sv,
        path,
        lambda vecs: np.maximum(_median_curve(vecs, normalise=True), REL_FLOOR),
        log_y=True,
        reference=None,
        xlabel="index / rank",
        ylabel="s_i / s_1 of dW",
        title="Singular values of the applied update dW (median over layers of each type)",
    )


def _color(i: int, n: int, cmap: Any) -> Any:
    if cmap is None:
        return None
    return cmap(0.1 + 0.8 * i / max(1, n - 1))


def plot_training(history: History, path: str) -> str | None:
    """Alpha, update stable rank, update RMS ratio and (if logged) polar error over training."""
    panels = [
        ("alpha", "weight ESD tail exponent alpha", False),
        ("stable_rank", "stable rank of dW", False),
        ("update_rms_ratio", "rms(dW) / rms(W)", True),
        ("polar_err_max", "max |s_i - 1| of polar update", True),
    ]
    panels = [
        p for p in panels if any(math.isfinite(v) for _, ys in history.series(p[0]).values() for v in ys)
    ]
    if not panels:
        return None
    rows, cols = _grid(len(panels))
    fig = _figure(rows, cols)
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (stat, label, log) in zip(axes, panels, strict=False):
        series = history.series(stat)
        for ltype, names in _by_type(sorted(series)).items():
            by_step: dict[int, list[float]] = {}
            for n in names:
                for x, y in zip(*series[n], strict=True):
                    if math.isfinite(y):
                        by_step.setdefault(x, []).append(y)
            if not by_step:
                continue
            xs = sorted(by_step)
            med = [float(np.median(by_step[x])) for x in xs]
            lo = [min(by_step[x]) for x in xs]
            hi = [max(by_step[x]) for x in xs]
            (line,) = ax.plot(xs, med, marker=".", label=ltype)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        if log:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Over training (median over layers of each type, band = min..max)")
    fig.savefig(path, dpi=110)
    return path


def plot_polar(history: History, path: str) -> str | None:
    """Per layer type: singular values of the polar output in the momentum's directions, sorted."""
    return _plot_per_layer_type(
        history.polar_sv,
        path,
        lambda vecs: _median_curve(vecs, normalise=False),
        log_y=False,
        reference=1.0,
        xlabel="direction (sorted) / count",
        ylabel="s_i of polar output",
        title="Polar step output in the momentum's singular directions (ideal: all 1)",
    )


def write_all(history: History, directory: str) -> list[str]:
    """Write ``update_spectra.png``, ``training.png`` and (with polar data) ``polar.png``."""
    os.makedirs(directory, exist_ok=True)
    written = [
        plot_update_spectra(history, os.path.join(directory, "update_spectra.png")),
        plot_training(history, os.path.join(directory, "training.png")),
        plot_polar(history, os.path.join(directory, "polar.png")),
    ]
    return [p for p in written if p is not None]


def read_png(path: str) -> np.ndarray:
    """A written PNG as an (H, W, C) float array in [0, 1], for TensorBoard's add_image."""
    from matplotlib.image import imread

    return imread(path)
