"""Optimizer-step time for GPT-2 small's full parameter set (124M): MuonAdamW vs torch.optim.Muon + AdamW.

Both sides step the same parameter shapes with the same fixed gradients: hidden matrices with Muon
(method "jordan", 5 steps, bfloat16, "original" lr adjustment, no split or per-head, so the work is the
same as torch.optim.Muon's), embeddings, gains and biases with AdamW (betas (0.9, 0.95), eps 1e-10).
Repeats are interleaved (ours, peer, ours-polar-express, ours-polar-express in form "auto", in a seeded
random order per repeat) and the ratio is taken per repeat, so machine contention hits both sides
alike; the table reports the median and the spread. Form "auto" runs the polar steps of the wide
matrices in Gram form (polar_lightning.polar.iterations): the same polynomials, fewer multiply-adds.

Run: ``make bench-optim`` (writes RESULTS.md beside this file).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from polar_lightning.optim import MuonAdamW
from polar_lightning.provenance import cpu_model, short_commit

HERE = Path(__file__).resolve().parent
# GPT-2 small (Radford et al. 2019; nanoGPT layout): 12 layers, width 768, context 1024, vocab 50257.
# Linear weights are (out, in); lm_head is tied to wte so it adds no parameter.
N_LAYER, D, VOCAB, CONTEXT = 12, 768, 50257, 1024


def gpt2_small_shapes() -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(Muon shapes, AdamW shapes) of GPT-2 small."""
    matrices, others = [], [(VOCAB, D), (CONTEXT, D)]  # wte, wpe
    for _ in range(N_LAYER):
        matrices += [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)]  # c_attn, attn.c_proj, c_fc, mlp.c_proj
        others += [(D,), (D,), (3 * D,), (D,), (D,), (D,), (4 * D,), (D,)]  # ln_1, biases, ln_2, biases
    others += [(D,), (D,)]  # ln_f
    return matrices, others


def make_params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=g) * 0.02)
        p.grad = torch.randn(shape, generator=g) * 1e-3
        params.append(p)
    return params


class Ours:
    def __init__(self, method: str, matrices, others, form: str = "rectangular") -> None:
        self.opt = MuonAdamW(
            [
                {"params": make_params(matrices, 0), "algorithm": "muon", "lr": 0.02},
                {"params": make_params(others, 1), "algorithm": "adamw", "lr": 3e-4},
            ],
            method=method, steps=5, polar_dtype="bfloat16", adjust_lr="original", form=form,
        )

    def step(self) -> None:
        self.opt.step()


class Peer:
    def __init__(self, matrices, others) -> None:
        self.muon = torch.optim.Muon(
            make_params(matrices, 0), lr=0.02, weight_decay=0.0, adjust_lr_fn="original"
        )
        self.adamw = torch.optim.AdamW(make_params(others, 1), lr=3e-4, betas=(0.9, 0.95), eps=1e-10,
                                       weight_decay=0.0)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats (>= 7 for RESULTS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write RESULTS.md")
    args = parser.parse_args()
    if args.repeats < 1:
        raise ValueError(f"--repeats must be positive, got {args.repeats}")
    matrices, others = gpt2_small_shapes()
    n_params = sum(torch.Size(s).numel() for s in matrices + others)
    runners = {"ours_jordan": Ours("jordan", matrices, others), "peer": Peer(matrices, others),
               "ours_polar_express": Ours("polar_express", matrices, others),
               "ours_polar_express_auto": Ours("polar_express", matrices, others, form="auto")}
    load_before = os.getloadavg()[0]
    for runner in runners.values():  # warm-up: allocates state, first-call overheads
        runner.step()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in tqdm(range(args.repeats), desc="interleaved repeats"):
        # A fresh order each repeat (seeded): under a plain rotation every runner always follows the
        # same one; two rotated runs gave 1.057x and 1.018x where an op-level profile shows parity.
        order = random.Random(r).sample(names, len(names))
        for name in order:
            times[name].append(timed(runners[name].step))
    ratio_j = [a / b for a, b in zip(times["ours_jordan"], times["peer"], strict=True)]
    ratio_pe = [a / b for a, b in zip(times["ours_polar_express"], times["peer"], strict=True)]
    ratio_auto = [a / b for a, b in zip(times["ours_polar_express_auto"], times["peer"], strict=True)]
    load_after = os.getloadavg()[0]

    def row(label: str, xs: list[float], unit: str = "") -> str:
        return f"| {label} | {statistics.median(xs):.3f}{unit} | {min(xs):.3f}{unit} - {max(xs):.3f}{unit} |"

    table = "\n".join([
        "| quantity | median | spread (min - max) |",
        "|---|---|---|",
        row("MuonAdamW (jordan) step, s", times["ours_jordan"]),
        row("MuonAdamW (polar_express) step, s", times["ours_polar_express"]),
        row("MuonAdamW (polar_express, form auto) step, s", times["ours_polar_express_auto"]),
        row("torch.optim.Muon + AdamW step, s", times["peer"]),
        row("ratio jordan / peer", ratio_j, "x"),
        row("ratio polar_express / peer", ratio_pe, "x"),
        row("ratio polar_express form auto / peer", ratio_auto, "x"),
    ])
    verdict = "PASS" if statistics.median(ratio_j) <= 1.0 else "FAIL"
    print(table)
    print(f"bar <= 1.0x (jordan, same work): {verdict}")
    if args.no_write:
        return
    commit = short_commit()
    cpu = f"{cpu_model()}, {os.cpu_count()} logical CPUs"
    size = f"{n_params / 1e6:.1f}M"
    text = f"""# Optimizer step: MuonAdamW vs torch.optim.Muon + torch.optim.AdamW (GPT-2 small, {size})

- command: `make bench-optim` (`python recipes/optim_step/bench.py --repeats {args.repeats}`)
- hardware: {cpu}, {torch.get_num_threads()} torch threads; 1-min load average {load_before:.2f} before,
  {load_after:.2f} after (other jobs show up here: read the ratio, not the seconds)
- git commit: {commit}; torch {torch.__version__}; parameters float32, polar iteration bfloat16
- work: {len(matrices)} Muon matrices (c_attn 2304x768, attn.c_proj 768x768, c_fc 3072x768,
  mlp.c_proj 768x3072 per layer), {len(others)} AdamW tensors (wte 50257x768, wpe 1024x768, gains,
  biases); 5 polar steps, "original" lr adjustment, no split or per-head on either side.
- peer: torch.optim.Muon (its default Jordan quintic) + torch.optim.AdamW (defaults: single-tensor on CPU).
- {args.repeats} interleaved repeats (seeded random order each) after one warm-up step each; ratio
  per repeat, then median.

{table}

Bar: ratio (jordan, the same work as the peer) <= 1.0x: **{verdict}**.
The polar_express row runs the Polar Express coefficients (same number of matrix products); the
form-auto row the same coefficients, wide matrices in Gram form (35 instead of 45 m^3 multiply-adds
for a 768x3072 block).
"""
    (HERE / "RESULTS.md").write_text(text)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
