"""Training throughput through Lightning vs the same model and optimizer in a bare PyTorch loop.

Both sides train one GPT2Module's model with the optimizer and scheduler its ``configure_optimizers``
builds (MuonAdamW, Polar Express, 5 steps, bf16 polar iterations), on the same in-memory token batches,
with the same precision (bf16 autocast on CPU). Lightning runs the module's full training_step and
logging (loss, tokens seen, tokens/s); validation and checkpointing are off on both sides.

A step's time is the interval between consecutive "batch in hand, about to run forward" moments, so it
holds forward, backward, optimizer and scheduler steps, zero_grad, the next batch's fetch and, on the
Lightning side, its hooks and logging. Rounds alternate the two sides (order flipped every round) so
machine contention hits both alike; each round drops its first ``warmup`` steps. Reported: median step
time over all kept steps per side, and the median of the per-round time ratios.

Run: ``make bench-train`` (writes RESULTS.md and train_throughput.png beside this file).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import matplotlib
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from tqdm import tqdm

from polar_lightning.module import GPT2Module
from polar_lightning.provenance import cpu_model

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)

from polar_lightning.provenance import short_commit

HERE = Path(__file__).resolve().parent
# The bar: Lightning may cost at most 5% over the bare loop.
OVERHEAD_BAR = 0.05


@dataclass
class Case:
    preset: str
    batch_size: int
    seq_len: int
    rounds: int
    steps: int  # kept steps per round per side
    warmup: int  # dropped steps at the start of each round
    # side -> kept step times: wall-clock seconds and this process's CPU seconds
    times: dict[str, list[float]] = field(default_factory=lambda: {"bare": [], "lightning": []})
    cpu_times: dict[str, list[float]] = field(default_factory=lambda: {"bare": [], "lightning": []})
    ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


class StepClock(Callback):
    """Timestamps each training batch as it enters the step (before forward)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(stamp())


def token_batches(case: Case, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (n, case.batch_size, case.seq_len + 1), generator=g)  # (n, B, T+1)


def stamp() -> tuple[float, float]:
    """(wall clock, this process's CPU time): CPU time is less disturbed by other processes."""
    return time.perf_counter(), time.process_time()


def kept_intervals(stamps: list[tuple[float, float]], warmup: int, steps: int) -> tuple[list, list]:
    """(wall, CPU) durations of the kept steps."""
    kept = list(zip(stamps, stamps[1:], strict=False))[warmup : warmup + steps]
    return [b[0] - a[0] for a, b in kept], [b[1] - a[1] for a, b in kept]


def run_bare(
    module: GPT2Module, optimizer_config: dict, batches: torch.Tensor, autocast: bool
) -> list[tuple[float, float]]:
    """The same model/optimizer/scheduler stepped by hand; returns the batch-start timestamps."""
    optimizer = optimizer_config["optimizer"]
    scheduler = optimizer_config["lr_scheduler"]["scheduler"]
    model = module.model.train()
    stamps = []
    for batch in DataLoader(list(batches), batch_size=None):
        stamps.append(stamp())
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)  # (B, T, vocab)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        loss.item()  # Lightning reads the loss every step for its progress bar: same sync here
    stamps.append(stamp())
    return stamps


def run_lightning(
    module: GPT2Module, batches: torch.Tensor, precision: str, log_dir: Path
) -> list[tuple[float, float]]:
    clock = StepClock()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=len(batches), precision=precision, logger=CSVLogger(log_dir),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    trainer.fit(module, DataLoader(list(batches), batch_size=None))
    clock.stamps.append(stamp())  # end of the last step (fit returns right after it)
    return clock.stamps


def run_case(case: Case, precision: str, log_dir: Path, bar: tqdm) -> None:
    torch.manual_seed(0)
    module = GPT2Module(preset=case.preset, context_length=case.seq_len)
    n = case.warmup + case.steps
    autocast = precision == "bf16-mixed"
    for r in range(case.rounds):
        batches = token_batches(case, n, seed=r)
        order = ("bare", "lightning") if r % 2 == 0 else ("lightning", "bare")
        per_side = {}
        for side in order:
            if side == "bare":
                # configure_optimizers reads trainer.max_steps: give it a trainer of the same length.
                module.trainer = L.Trainer(max_steps=n, logger=False, enable_progress_bar=False,
                                           enable_model_summary=False, enable_checkpointing=False)
                stamps = run_bare(module, module.configure_optimizers(), batches, autocast)
                module.trainer = None
            else:
                stamps = run_lightning(module, batches, precision, log_dir)
            per_side[side] = kept_intervals(stamps, case.warmup, case.steps)
            case.times[side].extend(per_side[side][0])
            case.cpu_times[side].extend(per_side[side][1])
            bar.update(n)
        for i, ratios in ((0, case.ratios), (1, case.cpu_ratios)):
            lightning, bare = per_side["lightning"][i], per_side["bare"][i]
            ratios.append(statistics.median(lightning) / statistics.median(bare))


def write_results(cases: list[Case], args: argparse.Namespace, seconds: float, load: tuple) -> str:
    lines = [
        "# Training throughput: Lightning vs a bare PyTorch loop",
        "",
        f"- hardware: {cpu_model() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch "
        f"thread(s) ({platform.platform()}); load average {load[0]:.1f} at start, {load[1]:.1f} at end",
        f"- command: `{' '.join(['python recipes/train_throughput/bench.py', *args.argv])}`",
        f"- git commit: {args.commit}, torch {torch.__version__}, lightning {L.__version__}",
        f"- dtype: {args.precision} (fp32 weights, bf16 autocast); MuonAdamW, polar_express, 5 polar steps "
        "(bf16)",
        f"- wall time of the benchmark: {seconds:.0f} s",
        "",
        "| model | tokens/step | kept steps/side | bare step (s) | Lightning step (s) | bare tokens/s "
        "| Lightning tokens/s | overhead, wall (median of round ratios, min..max) "
        "| overhead, CPU time (median of round ratios, min..max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        bare, light = statistics.median(c.times["bare"]), statistics.median(c.times["lightning"])
        wall, cpu = statistics.median(c.ratios), statistics.median(c.cpu_ratios)
        lines.append(
            f"| {c.preset} | {c.batch_size}x{c.seq_len} | {len(c.times['bare'])} | {bare:.3f} | {light:.3f} "
            f"| {c.tokens_per_step / bare:,.0f} | {c.tokens_per_step / light:,.0f} "
            f"| {wall - 1:+.1%} ({min(c.ratios) - 1:+.1%}..{max(c.ratios) - 1:+.1%}) "
            f"| {cpu - 1:+.1%} ({min(c.cpu_ratios) - 1:+.1%}..{max(c.cpu_ratios) - 1:+.1%}) |"
        )

    def verdict(ratio: float) -> str:
        return "within" if ratio - 1 <= OVERHEAD_BAR else "OVER"

    verdicts = [
        f"{c.preset}: wall {verdict(statistics.median(c.ratios))}, CPU time "
        f"{verdict(statistics.median(c.cpu_ratios))} the bar"
        for c in cases
    ]
    lines += [
        "",
        f"Bar: Lightning overhead <= {OVERHEAD_BAR:.0%}. " + "; ".join(verdicts) + ".",
        "",
        f"{args.rounds} interleaved rounds per model, order flipped each round; each round drops its first "
        "warm-up steps; a round's ratio is its Lightning median step over its bare median step. Tokens/s use "
        "the pooled wall-clock medians. CPU time (this process's user + system seconds) is the steadier "
        "measure on a shared machine, where other processes stretch wall-clock steps at random.",
        "",
        "![step times](train_throughput.png)",
        "",
    ]
    return "\n".join(lines)


def plot(cases: list[Case], path: Path) -> None:
    fig, axes = plt.subplots(2, len(cases), figsize=(5 * len(cases), 7), squeeze=False)
    for col, c in enumerate(cases):
        for row, (times, label) in enumerate(((c.times, "wall-clock"), (c.cpu_times, "CPU"))):
            ax = axes[row][col]
            ax.boxplot([times["bare"], times["lightning"]], tick_labels=["bare loop", "Lightning"])
            ax.set_title(f"{c.preset}, {c.batch_size}x{c.seq_len} tokens/step")
            ax.set_ylabel(f"{label} step time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-tiny", "gpt2-small"])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per model (>= 7)")
    parser.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32-true"])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md and the plot")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: CPU time then measures work, not threads waiting)")
    args = parser.parse_args(argv)
    args.commit = short_commit()  # before this script writes its own outputs into the tree
    args.argv = sys.argv[1:] if argv is None else list(argv)
    # Per model: (batch, context, kept steps per round, warm-up steps per round). Tiny uses the demo's
    # batch shape; small a short context so a CPU step takes seconds. Both keep >= 20 steps per side.
    shapes = {"gpt2-tiny": (8, 128, 4, 2), "gpt2-small": (1, 128, 3, 1)}
    unknown = [m for m in args.models if m not in shapes]
    if unknown:
        raise SystemExit(f"bench.py: unknown model(s) {unknown}; choose from {list(shapes)}")
    cases = [Case(m, *shapes[m][:2], args.rounds, *shapes[m][2:]) for m in args.models]
    for c in cases:
        if c.rounds * c.steps < 20:
            raise SystemExit(f"bench.py: {c.preset} keeps {c.rounds * c.steps} steps per side; need >= 20")
    # Lightning's per-fit banners and warnings (no val loader, ...) would bury the progress bar.
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    log_dir = Path(tempfile.mkdtemp(prefix="polar_lightning_bench_train_"))
    load_start = os.getloadavg()[0]
    total = sum(2 * c.rounds * (c.warmup + c.steps) for c in cases)
    start = time.perf_counter()
    with tqdm(total=total, desc="training steps", unit="step") as bar:
        for c in cases:
            run_case(c, args.precision, log_dir, bar)
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    plot(cases, args.out / "train_throughput.png")
    text = write_results(cases, args, seconds, (load_start, os.getloadavg()[0]))
    shutil.rmtree(log_dir, ignore_errors=True)
    (args.out / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
