"""GPU check in under 5 minutes (``make device-check``): GPU-only tests, GPT-2 small training throughput
and MFU (bf16-mixed, eager and torch.compile), and polar-step timing at large matrix sizes. No network.

Prints one table and writes it to RESULTS.md beside this file. Without CUDA it says so and exits 2.
The CPU test suite, the CPU benchmarks and the demo do not need this; it checks the GPU paths CI never
runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The budget for the whole check.
BUDGET_S = 300


def no_cuda_message() -> str:
    return (
        "device-check needs a CUDA GPU, and torch.cuda.is_available() is False here "
        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). On a GPU machine install a CUDA "
        "build of torch, e.g. `make device-check TORCH=torch`."
    )


def run_gpu_tests(timeout_s: float) -> tuple[str, str]:
    """pytest -m gpu; returns (status, pytest's summary line)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return "TIMEOUT", f"over {timeout_s:.0f} s"
    summary = [line for line in result.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    line = summary[-1].strip("= ") if summary else result.stdout.strip().splitlines()[-1:]
    status = "ok" if result.returncode == 0 else "FAILED"
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return status, str(line)


def train_throughput(compile: bool, batch_size: int, seq_len: int, warmup: int, steps: int) -> dict:
    """Median step time of GPT-2 small under Lightning (bf16-mixed), tokens/s and MFU."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.data import DataLoader

    from polar_lightning.module import GPT2Module, peak_bf16_flops

    class Clock(Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    torch.manual_seed(0)
    module = GPT2Module(preset="gpt2-small", compile=compile)
    n = warmup + steps + 1
    g = torch.Generator().manual_seed(0)
    batches = torch.randint(0, 50257, (n, batch_size, seq_len + 1), generator=g)  # (n, B, T+1)
    clock = Clock()
    torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=n, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    start = time.perf_counter()
    trainer.fit(module, DataLoader(list(batches), batch_size=None))
    torch.cuda.synchronize()
    clock.stamps.append(time.perf_counter())
    intervals = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)][warmup:warmup + steps]
    step = statistics.median(intervals)
    tokens_per_s = batch_size * seq_len / step
    peak = peak_bf16_flops(torch.device("cuda"))
    mfu = None if peak is None else module.model.flops_per_token(seq_len) * tokens_per_s / peak
    return {
        "step_s": step, "tokens_per_s": tokens_per_s, "mfu": mfu, "wall_s": time.perf_counter() - start,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def polar_timing(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    """Median time of one 5-step polar call (bf16) per method on stacks of (batch, rows, cols), with
    the error against the exact polar factor (float64 SVD on the first matrix)."""
    from polar_lightning.polar import orthogonalize

    rows = []
    for batch, m, n in shapes:
        g = torch.randn(batch, m, n, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        u, _, vh = torch.linalg.svd(g[0].double(), full_matrices=False)
        exact = (u @ vh).float()  # (m, n)
        for method in ("polar_express", "jordan", "you"):
            out = orthogonalize(g, method, 5, torch.bfloat16)  # warm-up (and kernels' autotuning)
            times = []
            for _ in range(repeats):
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                out = orthogonalize(g, method, 5, torch.bfloat16)
                end.record()
                torch.cuda.synchronize()
                times.append(begin.elapsed_time(end) / 1e3)
            error = torch.linalg.matrix_norm(out[0].float() - exact, ord=2).item()
            rows.append({"shape": f"{batch}x{m}x{n}", "method": method, "ms": 1e3 * statistics.median(times),
                         "error": error})
    return rows


def table(results: dict) -> str:
    lines = ["| check | setting | result |", "|---|---|---|"]
    status, summary = results["tests"]
    lines.append(f"| GPU tests (`pytest -m gpu`) | tests/ | {status}: {summary} |")
    for label, r in results["train"].items():
        if isinstance(r, str):
            lines.append(f"| GPT-2 small training | {label} | {r} |")
            continue
        mfu = "n/a (GPU not in the peak table)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(
            f"| GPT-2 small training | {label} | {r['tokens_per_s']:,.0f} tokens/s, "
            f"step {r['step_s'] * 1e3:.0f} ms, MFU {mfu}, peak mem {r['peak_mem_gib']:.1f} GiB, "
            f"wall {r['wall_s']:.0f} s |"
        )
    for r in results["polar"]:
        lines.append(
            f"| polar step, 5 iterations, bf16 | {r['shape']} {r['method']} | {r['ms']:.2f} ms per call, "
            f"spectral error vs SVD {r['error']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (GPT-2 small)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20, help="measured steps after warm-up")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_cuda_message(), file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    print(f"device-check on {device} (torch {torch.__version__}, CUDA {torch.version.cuda})", flush=True)
    results: dict = {"train": {}, "polar": []}

    print("1/3 GPU-only tests ...", flush=True)
    results["tests"] = ("skipped", "--skip-tests") if args.skip_tests else run_gpu_tests(timeout_s=120)

    print("2/3 GPT-2 small training throughput ...", flush=True)
    shape = f"{args.batch_size}x{args.seq_len}, bf16-mixed"
    results["train"][f"{shape}, eager"] = train_throughput(False, args.batch_size, args.seq_len, 3,
                                                           args.steps)
    if args.skip_compile:
        results["train"][f"{shape}, torch.compile"] = "skipped (--skip-compile)"
    elif time.perf_counter() - start > BUDGET_S - 120:
        results["train"][f"{shape}, torch.compile"] = "skipped: not enough of the 5-minute budget left"
    else:
        # The first steps compile (about a minute for GPT-2 small); they are warm-up, not measured.
        results["train"][f"{shape}, torch.compile"] = train_throughput(True, args.batch_size, args.seq_len,
                                                                       5, args.steps)

    print("3/3 polar step at large sizes ...", flush=True)
    # GPT-2 Large's MLP matrix (1280x5120), a square 4096 and 8192 (7B-13B-class hidden sizes).
    results["polar"] = polar_timing([(36, 1280, 5120), (4, 4096, 4096), (1, 8192, 8192)], repeats=10)

    seconds = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    text = "\n".join([
        "# Device check",
        "",
        f"- hardware: {device} x{torch.cuda.device_count()}, host {platform.node() or platform.machine()}",
        f"- command: `python recipes/device_check/run.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- git commit: {commit}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        "- dtype: bf16-mixed training (fp32 weights), bf16 polar iterations",
        f"- total wall time: {seconds:.0f} s (budget {BUDGET_S} s)",
        "",
        table(results),
        "",
    ])
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    failed = results["tests"][0] not in ("ok", "skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
