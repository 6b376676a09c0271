"""PNG plots of a sweep: validation loss against learning rate (as the paper's Figure 4), the loss
curves at each method's best learning rate, and the polar error of the applied updates."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from presets import METHOD_LABELS  # noqa: E402

COLORS = {"adamw": "tab:gray", "jordan": "tab:blue", "you": "tab:green", "polar_express": "tab:red"}
# Exponential moving average of the logged training loss (logged every few steps): enough smoothing to
# read the curves' order without hiding the decay phase of the schedule.
TRAIN_EMA = 0.8


def _finished(results: list[Any], method: str, lr: float | None) -> list[Any]:
    return [r for r in results if r.method == method and r.lr == lr and r.status == "finished"]


def _mean_curve(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Mean over runs at the steps every run logged."""
    if not curves:
        return [], []
    common = set.intersection(*({s for s, _ in c} for c in curves))
    steps = sorted(common)
    tables = [dict(c) for c in curves]
    return steps, [statistics.fmean(t[s] for t in tables) for s in steps]


def _ema(values: list[float], alpha: float = TRAIN_EMA) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def val_loss_vs_lr(results: list[Any], methods: list[str], path: Path, title: str) -> bool:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for m in methods:
        lrs = sorted({r.lr for r in results if r.method == m})
        xs, means, sds = [], [], []
        for lr in lrs:
            vals = [r.loss for r in _finished(results, m, lr) if r.loss is not None and math.isfinite(r.loss)]
            if not vals:
                continue
            xs.append(lr)
            means.append(statistics.fmean(vals))
            sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            ax.scatter([lr] * len(vals), vals, color=COLORS[m], alpha=0.3, s=12)
        if xs:
            ax.errorbar(xs, means, yerr=sds, color=COLORS[m], marker="o", capsize=3, label=METHOD_LABELS[m])
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (AdamW: all parameters; Muon methods: Muon rate)")
    ax.set_ylabel("final validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def loss_curves(results: list[Any], best: dict[str, float | None], methods: list[str], path: Path,
                title: str) -> bool:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for m in methods:
        runs = _finished(results, m, best.get(m))
        if not runs:
            continue
        label = f"{METHOD_LABELS[m]} (lr {best[m]:g}, {len(runs)} seed{'s' if len(runs) > 1 else ''})"
        steps, train = _mean_curve([r.train for r in runs if r.train])
        if steps:
            ax.plot(steps, _ema(train), color=COLORS[m], alpha=0.8, label=label + " train (EMA)")
        vsteps, val = _mean_curve([r.val for r in runs if r.val])
        if vsteps:
            ax.plot(vsteps, val, color=COLORS[m], marker="o", linestyle="--", label=label + " val")
        drawn = drawn or bool(steps or vsteps)
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    low = [v for line in ax.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if low:
        # The first steps' loss (~ln 50257 = 10.8) would squash the differences that matter.
        lo = min(low)
        ax.set_ylim(lo - 0.1, lo + 2.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def polar_error(results: list[Any], best: dict[str, float | None], methods: list[str], path: Path,
                title: str) -> bool:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for m in methods:
        runs = [r for r in _finished(results, m, best.get(m)) if r.polar_max]
        if not runs:
            continue
        steps, worst = _mean_curve([r.polar_max for r in runs])
        msteps, median = _mean_curve([r.polar_median for r in runs])
        ax.plot(steps, worst, color=COLORS[m], marker=".", label=f"{METHOD_LABELS[m]} max (lr {best[m]:g})")
        ax.plot(msteps, median, color=COLORS[m], linestyle=":", label=f"{METHOD_LABELS[m]} median")
        drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("|s_i - 1| of the orthogonalised update")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_all(results: list[Any], best: dict[str, float | None], methods: list[str], out_dir: Path,
              preset: str) -> list[tuple[str, Path]]:
    """Write the plots that have data; returns (title, path) of each."""
    written = []
    specs = [
        ("validation loss vs learning rate", "val_loss_vs_lr",
         lambda p, t: val_loss_vs_lr(results, methods, p, t)),
        ("loss curves at the best learning rates", "loss_curves",
         lambda p, t: loss_curves(results, best, methods, p, t)),
        ("polar error of the applied updates", "polar_error",
         lambda p, t: polar_error(results, best, methods, p, t)),
    ]
    for title, stem, draw in specs:
        path = out_dir / f"{preset}-{stem}.png"
        if draw(path, f"{preset}: {title}"):
            written.append((title, path))
    return written
