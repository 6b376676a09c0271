"""Polar error and speed of Polar Express against its peers (``make bench-polar``).

Writes RESULTS.md and PNG plots beside this file (or into --out-dir):

1. spectral-norm error ||X_k - U V^T||_2 for k = 1..20, every method, fp32 and bf16, on
   (a) a square matrix with singular values geometric in [1e-6, 1] (the paper's Figure 3), with Polar
   Express also rebuilt by optimal_coefficients for l = the matrix's smallest normalised singular value;
   (b) a 768x3072 Gaussian matrix; (c) a real gradient of a small byte-level transformer trained for a
   few steps on the shipped Wikipedia sample; plus [min, max] of the singular values after 5 steps;
2. the worst case over normalised singular values in [1e-3, 1] after k = 1..8 steps (float64 scalar
   map), and the same on fp32 / bf16 matrices with the spectrum placed there directly;
3. time per call at 5 steps for GPT-2 small's hidden matrices against torch.optim.Muon's own
   iteration, interleaved repeats in one run, as ratios; for the default rectangular form and for
   ``form="auto"`` (the Gram form on wide matrices). Section 1 carries a Gram-form row for accuracy.

``--quick`` shrinks every size (smoke test, < 1 minute); its numbers are not the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import Tensor, nn
from torch.optim._muon import _zeropower_via_newtonschulz
from tqdm import tqdm

from polar_lightning.polar import (
    PolarMethod,
    apply_polynomials,
    optimal_coefficients,
    orthogonalize,
    orthogonalize_many,
    polar_coefficients,
    polar_iterates,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the Agg backend)

from polar_lightning.provenance import cpu_model, short_commit

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAMPLE = REPO / "polar_lightning" / "data" / "assets" / "sample" / "wiki-00000.parquet"

METHODS = ["polar_express", "polar_express_5", "jordan", "you", "newton_schulz"]
MATCHED = "polar_express (l matched)"
GRAM = "polar_express (Gram form)"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
JORDAN = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's default ns_coefficients
MAX_K = 20  # the paper's Figure 3 runs 20 iterations (--quick: 12)
# The paper's cushion for its published table (polar-express.md, "Published coefficients").
PAPER_CUSHION = 0.02407327424182761
# GPT-2 small: width 768, 12 layers; per layer c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
GPT2_LAYERS = 12


# ---- measurement helpers ----------------------------------------------------------------------------


def spectral_norm(d: Tensor, start: Tensor | None = None, iters: int = 30) -> tuple[float, Tensor]:
    """||d||_2 by block subspace iteration on d^T d with a Rayleigh-Ritz finish (float64).

    A full SVD of a 1024x1024 matrix costs seconds on a shared CPU and this runs hundreds of times.
    8 vectors; ``start`` (the previous call's subspace, for the next iterate of the same matrix) fills
    half of them, random vectors the rest. Agrees with the SVD to ~1e-3 relative (a lower bound).

    Returns:
        (the estimate, the subspace (n, 8) to warm-start the next call).
    """
    d = d.to(torch.float64).reshape(d.shape[-2:])
    if d.shape[0] < d.shape[1]:
        d = d.T  # (m, n) with n <= m: iterate in the small dimension
    block = min(8, d.shape[1])
    q = torch.randn(d.shape[1], block, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if start is not None:
        q[:, : block // 2] = start[:, : block // 2]
    for _ in range(iters):
        q, _ = torch.linalg.qr(d.T @ (d @ q))  # (n, block)
    _, s, vh = torch.linalg.svd(d @ q, full_matrices=False)
    return float(s[0]), q @ vh.T  # Ritz vectors, largest first


def singular_values(x: Tensor) -> Tensor:
    """All singular values of a matrix, via the eigenvalues of its small Gram matrix (float64)."""
    x = x.to(torch.float64)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x  # (k, k)
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()


def random_orthonormal(rows: int, cols: int, gen: torch.Generator) -> Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q  # (rows, cols)


def with_spectrum(m: int, n: int, s: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """(U diag(s) V^T, U V^T) in float64 with random orthonormal U (m, k), V (n, k)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u, v = random_orthonormal(m, k, gen), random_orthonormal(n, k, gen)
    return (u * s) @ v.T, u @ v.T


def svd_polar(g: Tensor) -> Tensor:
    u, _, vh = torch.linalg.svd(g.to(torch.float64), full_matrices=False)
    return u @ vh


def transformer_gradient(quick: bool, seed: int = 0) -> tuple[Tensor, str]:
    """The gradient of an MLP weight of a small byte-level causal transformer, after a short warm-up.

    Text: the shipped Wikipedia sample, read as UTF-8 bytes (vocabulary 256, no tokenizer needed).
    """
    import pyarrow.parquet as pq

    torch.manual_seed(seed)
    text = "\n".join(pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist())
    data = torch.frombuffer(bytearray(text.encode("utf-8")[:2_000_000]), dtype=torch.uint8).long()
    d_model, layers, ff, ctx, batch, warmup = (64, 2, 256, 64, 8, 2) if quick else (256, 4, 1024, 128, 16, 30)
    emb = nn.Embedding(256, d_model)
    pos = nn.Parameter(torch.zeros(ctx, d_model))
    layer = nn.TransformerEncoderLayer(
        d_model,
        nhead=4,
        dim_feedforward=ff,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    norm, head = nn.LayerNorm(d_model), nn.Linear(d_model, 256)
    params = [*emb.parameters(), pos, *blocks.parameters(), *norm.parameters(), *head.parameters()]
    mask = nn.Transformer.generate_square_subsequent_mask(ctx)
    opt = torch.optim.AdamW(params, lr=1e-3)

    def loss_on_random_window() -> Tensor:
        starts = torch.randint(0, data.numel() - ctx - 1, (batch,))
        window = torch.stack([data[s : s + ctx + 1] for s in starts.tolist()])  # (B, ctx + 1)
        h = blocks(emb(window[:, :-1]) + pos, mask=mask, is_causal=True)  # (B, ctx, d)
        logits = head(norm(h))  # (B, ctx, 256)
        return nn.functional.cross_entropy(logits.reshape(-1, 256), window[:, 1:].reshape(-1))

    for _ in range(warmup):
        opt.zero_grad()
        loss_on_random_window().backward()
        opt.step()
    opt.zero_grad()
    loss_on_random_window().backward()
    weight = blocks.layers[1].linear1.weight
    what = (
        f"layers[1].linear1.weight.grad {tuple(weight.shape)} of a {layers}-layer byte-level transformer "
        f"(d_model {d_model}, ff {ff}, ctx {ctx}, batch {batch}) after {warmup} AdamW steps "
        "on the wiki sample"
    )
    return weight.grad.detach().clone(), what


# ---- 1. error against iteration ----------------------------------------------------------------------


def gram_iterates(g: Tensor, max_k: int, dtype: torch.dtype) -> list[Tensor]:
    """polar_express in Gram form after k = 1..max_k steps (no X_k exists between its restarts)."""
    ks = range(1, max_k + 1)
    return [orthogonalize(g, "polar_express", k, dtype, check_finite=False, form="gram") for k in ks]


def error_curves(
    g: Tensor, polar: Tensor, methods: dict[str, object], max_k: int, bar: tqdm
) -> dict[str, dict[str, dict[str, object]]]:
    """errors[dtype][method] = {"err": [k=1..max_k], "range5": (min, max) singular value after 5 steps}."""
    out: dict[str, dict[str, dict[str, object]]] = {}
    for dname, dtype in DTYPES.items():
        out[dname] = {}
        for name, method in methods.items():
            errs, range5, q = [], (float("nan"), float("nan")), None
            if method == GRAM:
                iterates = gram_iterates(g.float(), max_k, dtype)
            else:
                iterates = polar_iterates(g.float(), method, max_k, dtype, check_finite=False)
            for k, x in enumerate(iterates, 1):
                err, q = spectral_norm(x.double() - polar, q, 30 if q is None else 12)
                errs.append(err)
                if k == 5:
                    s = singular_values(x)
                    range5 = (float(s.min()), float(s.max()))
            out[dname][name] = {"err": errs, "range5": range5}
            bar.update(1)
    return out


def first_below(errs: list[float], level: float) -> int | None:
    return next((k for k, e in enumerate(errs, 1) if e < level), None)


# ---- 2. worst case over [1e-3, 1] -------------------------------------------------------------------


def table_steps(method: str, k: int) -> list[tuple[float, ...]]:
    table, _, _ = polar_coefficients(method)
    return [table[min(j, len(table) - 1)] for j in range(k)]


def scalar_worst_case(methods: list[str], kmax: int = 8) -> dict[str, list[float]]:
    s = np.unique(np.concatenate([np.geomspace(1e-3, 1.0, 200001), np.linspace(1e-3, 1.0, 200001)]))
    out = {}
    for m in methods:
        _, prefactor, _ = polar_coefficients(m)
        out[m] = [
            float(np.abs(1 - apply_polynomials(table_steps(m, k), s / prefactor)).max())
            for k in range(1, kmax + 1)
        ]
    return out


def matrix_worst_case(
    methods: list[str], m: int, n: int, kmax: int = 8
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Spectrum geometric in [1e-3, 1] / prefactor, placed directly (normalisation skipped)."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for dname, dtype in DTYPES.items():
        out[dname] = {}
        for meth in methods:
            _, prefactor, _ = polar_coefficients(meth)
            s = torch.logspace(-3, 0, min(m, n), dtype=torch.float64) / prefactor
            g, polar = with_spectrum(m, n, s, seed=1)
            dev, dist = [], []
            for x in polar_iterates(g.float(), meth, kmax, dtype, check_finite=False, normalize=False):
                dev.append(float((singular_values(x) - 1).abs().max()))
                dist.append(spectral_norm(x.double() - polar)[0])
            out[dname][meth] = {"sv": dev, "dist": dist}
    return out


def steps_to_reach(degree: int, l0: float = 1e-3, target: float = 1e-3) -> int | None:
    lo = l0
    for k, step in enumerate(optimal_coefficients(l0, 40, degree=degree), 1):
        lo = float(apply_polynomials([step], lo))
        if 1.0 - lo < target:
            return k
    return None


# ---- 3. timing -------------------------------------------------------------------------------------


def torch_muon_iteration(g: Tensor) -> Tensor:
    return _zeropower_via_newtonschulz(g, JORDAN, 5, 1e-7)


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call for each candidate; each repeat runs every candidate once, order alternating."""
    names = list(candidates)
    for fn in candidates.values():  # warm-up: allocator, thread pool, first-call dispatch
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - t0)
    return times


TIMED_FORMS = ("rectangular", "auto")


def timing(shapes: list[tuple[int, int]], layers: int, repeats: int, bar: tqdm) -> list[dict[str, object]]:
    """Rows per shape and for the whole pass, one per form; every candidate interleaved in one run."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in shapes:
        g = torch.randn(*shape, generator=gen)
        candidates: dict[str, Callable[[], object]] = {
            form: lambda g=g, form=form: orthogonalize(
                g, "polar_express", 5, torch.bfloat16, check_finite=False, form=form, out_dtype=torch.bfloat16
            )
            for form in TIMED_FORMS
        }
        t = interleaved(candidates | {"torch": lambda g=g: torch_muon_iteration(g)}, repeats)
        what = f"{shape[0]}x{shape[1]}"
        rows += [{"what": what, "form": f, **_ratio_row(t, f), "bar": 1.05} for f in TIMED_FORMS]
        bar.update(1)
    mats = [torch.randn(*s, generator=gen) for _ in range(layers) for s in shapes]
    candidates = {
        form: lambda form=form: orthogonalize_many(
            mats, "polar_express", 5, torch.bfloat16, check_finite=False, form=form, out_dtype=torch.bfloat16
        )
        for form in TIMED_FORMS
    }
    t = interleaved(candidates | {"torch": lambda: [torch_muon_iteration(m) for m in mats]}, repeats)
    what = f"all {len(mats)} in one pass"
    rows += [{"what": what, "form": f, **_ratio_row(t, f), "bar": 1.0} for f in TIMED_FORMS]
    bar.update(1)
    return rows


def _ratio_row(t: dict[str, list[float]], ours: str) -> dict[str, object]:
    ratios = [a / b for a, b in zip(t[ours], t["torch"], strict=True)]
    return {
        "ours_ms": 1e3 * statistics.median(t[ours]),
        "torch_ms": 1e3 * statistics.median(t["torch"]),
        "ratio": statistics.median(ratios),
        "ratio_lo": min(ratios),
        "ratio_hi": max(ratios),
        "repeats": len(ratios),
    }


# ---- report ----------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "nan" if x != x else (f"{x:.3f}" if x >= 1e-3 else f"{x:.1e}")


def plot_errors(curves: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(len(curves), 2, figsize=(11, 3.6 * len(curves)), squeeze=False)
    for row, (title, per_dtype) in enumerate(curves.items()):
        for col, dname in enumerate(DTYPES):
            ax = axes[row][col]
            for name, rec in per_dtype[dname].items():
                ks = np.arange(1, len(rec["err"]) + 1)
                ax.semilogy(ks, np.maximum(rec["err"], 1e-12), marker=".", label=name)
            ax.axhline(0.1, color="grey", lw=0.6, ls=":")
            ax.set_title(f"{title} [{dname}]", fontsize=9)
            ax.set_xlabel("iteration k")
            ax.set_ylabel("||X_k - UV^T||_2")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worst(scalar: dict[str, list[float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, errs in scalar.items():
        ax.semilogy(range(1, len(errs) + 1), np.maximum(errs, 1e-17), marker="o", label=name)
    ax.set_xlabel("steps k")
    ax.set_ylabel("max over s in [1e-3, 1] of |1 - p(s)|")
    ax.set_title("Worst case, float64 scalar composition")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timing(rows: list[dict[str, object]], path: Path) -> None:
    """Grouped bars: one group per matrix set, one bar per form, whiskers at the ratio's min and max."""
    groups = list(dict.fromkeys(str(r["what"]) for r in rows))
    forms = list(dict.fromkeys(str(r["form"]) for r in rows))
    width = 0.8 / len(forms)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for j, form in enumerate(forms):
        mine = {str(r["what"]): r for r in rows if r["form"] == form}
        xs = [i + (j - (len(forms) - 1) / 2) * width for i, g in enumerate(groups) if g in mine]
        sel = [mine[g] for g in groups if g in mine]
        med = [r["ratio"] for r in sel]
        err = [[r["ratio"] - r["ratio_lo"] for r in sel], [r["ratio_hi"] - r["ratio"] for r in sel]]
        ax.bar(xs, med, width, yerr=err, capsize=3, label=f"form {form}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("time ratio: ours / torch.optim.Muon")
    ax.set_title("Polar Express (5 steps, bf16) vs torch.optim.Muon's iteration", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats: a smoke test")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md and the PNGs go")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 7, quick 3)")
    parser.add_argument("--skip-timing", action="store_true", help="leave out section 3")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for timing (default: torch's)"
    )
    args = parser.parse_args()
    args.commit = short_commit()  # before this script writes its own outputs into the tree
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.time()
    torch.manual_seed(0)

    # Sizes: the issue's, or a smoke-test shrink of each.
    n_a = 128 if args.quick else 1024
    shape_b = (64, 256) if args.quick else (768, 3072)
    shape_wc = (64, 96) if args.quick else (512, 768)
    shapes_t = [(64, 192), (64, 64), (64, 256), (256, 64)] if args.quick else GPT2_SHAPES
    layers_t = 2 if args.quick else GPT2_LAYERS
    max_k = 12 if args.quick else MAX_K
    # The accuracy sections run single-threaded: on a shared 2-core machine OpenMP threads waiting
    # on each other made them 5x slower. Timing uses --threads (default: torch's own choice).
    timing_threads = torch.get_num_threads() if args.threads is None else args.threads
    torch.set_num_threads(1)
    args.max_k, args.timing_threads = max_k, timing_threads

    with tqdm(total=3, desc="building matrices") as bar:
        s_a = torch.logspace(0, -6, n_a, dtype=torch.float64)  # paper Figure 3: geometric in [1e-6, 1]
        g_a, polar_a = with_spectrum(n_a, n_a, s_a, seed=0)
        bar.update(1)
        g_b = torch.randn(*shape_b, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        polar_b = svd_polar(g_b)
        bar.update(1)
        g_c, what_c = transformer_gradient(args.quick)
        polar_c = svd_polar(g_c)
        bar.update(1)

    # Polar Express rebuilt for (a): l = smallest singular value after the paper's normalisation.
    l_a = float(s_a.min() / (torch.linalg.matrix_norm(g_a) * 1.01 + 1e-7))
    matched = PolarMethod(
        "matched",
        tuple(optimal_coefficients(l_a, max_k, cushion=PAPER_CUSHION, safety=1.01)),
        1.01,
        1e-7,
        max_k,
    )
    methods_a: dict[str, object] = {m: m for m in METHODS} | {MATCHED: matched, GRAM: GRAM}
    methods_bc: dict[str, object] = {m: m for m in METHODS} | {GRAM: GRAM}
    matrices = {
        f"(a) {n_a}x{n_a}, singular values geometric in [1e-6, 1]": (g_a, polar_a, methods_a),
        f"(b) {shape_b[0]}x{shape_b[1]} Gaussian": (g_b, polar_b, methods_bc),
        f"(c) transformer gradient {tuple(g_c.shape)}": (g_c, polar_c, methods_bc),
    }
    total = sum(len(m) * len(DTYPES) for _, _, m in matrices.values())
    curves = {}
    with tqdm(total=total, desc="error vs iteration") as bar:
        for title, (g, polar, methods) in matrices.items():
            curves[title] = error_curves(g, polar, methods, max_k, bar)

    with tqdm(total=2, desc="worst case") as bar:
        scalar = scalar_worst_case(METHODS)
        bar.update(1)
        matrix_wc = matrix_worst_case(["polar_express", "jordan", "you"], *shape_wc)
        bar.update(1)
    degree_steps = {d: steps_to_reach(d) for d in (3, 5, 7)}

    timing_rows: list[dict[str, object]] = []
    if not args.skip_timing:
        torch.set_num_threads(timing_threads)
        with tqdm(total=len(shapes_t) + 1, desc="timing") as bar:
            timing_rows = timing(shapes_t, layers_t, repeats, bar)

    plot_errors(curves, args.out_dir / "polar_error.png")
    plot_worst(scalar, args.out_dir / "worst_case.png")
    if timing_rows:
        plot_timing(timing_rows, args.out_dir / "timing.png")
    report = render(
        args,
        curves,
        scalar,
        matrix_wc,
        degree_steps,
        timing_rows,
        what_c,
        l_a,
        load_start,
        time.time() - started,
        repeats,
        shape_wc,
    )
    (args.out_dir / "RESULTS.md").write_text(report)
    print(report)


def render(
    args,
    curves,
    scalar,
    matrix_wc,
    degree_steps,
    timing_rows,
    what_c,
    l_a,
    load_start,
    elapsed,
    repeats,
    shape_wc,
) -> str:
    lines: list[str] = []
    add = lines.append
    bars: list[str] = []
    title_a = next(iter(curves))
    fp32_a = curves[title_a]["fp32"]
    counts_a = {m: first_below(rec["err"], 0.1) for m, rec in fp32_a.items()}
    best = min((c for c in counts_a.values() if c is not None), default=None)
    mc = counts_a[MATCHED]
    others = [c for m, c in counts_a.items() if m not in (MATCHED, GRAM, "polar_express", "polar_express_5")]
    ok_a = mc is not None and mc == best and all(c is None or mc < c for c in others)
    listed = ", ".join(f"{m} {'never' if c is None else c}" for m, c in counts_a.items())
    bars.append(
        f"- (a) fp32, error < 0.1: Polar Express with matched l needs {mc} iterations, the fewest "
        f"(all: {listed}): **{'PASS' if ok_a else 'FAIL'}**"
    )
    ok_scalar = all(scalar["polar_express"][k] < min(scalar["jordan"][k], scalar["you"][k]) for k in range(8))
    bars.append(
        f"- worst case, float64 scalar map, k = 1..8: Polar Express below Jordan and You at every k: "
        f"**{'PASS' if ok_scalar else 'FAIL'}**"
    )
    for dname, key in (("fp32", "sv"), ("fp32", "dist"), ("bf16", "sv")):
        wc = matrix_wc[dname]
        ok = all(wc["polar_express"][key][k] < min(wc["jordan"][key][k], wc["you"][key][k]) for k in range(8))
        what = "max_i |s_i(X_k) - 1|" if key == "sv" else "||X_k - UV^T||_2"
        bars.append(
            f"- worst case, {dname} {shape_wc[0]}x{shape_wc[1]} matrix with spectrum placed in "
            f"[1e-3, 1]/prefactor, {what}, k = 1..8: Polar Express below Jordan and You: "
            f"**{'PASS' if ok else 'FAIL'}**"
        )
    for row in timing_rows:
        ok = row["ratio"] <= row["bar"]
        bars.append(
            f"- time, {row['what']}, form {row['form']}: ratio {row['ratio']:.3f} (bar <= {row['bar']}): "
            f"**{'PASS' if ok else 'FAIL'}**"
        )

    add("# Polar error and speed: Polar Express vs Jordan, You, Newton-Schulz, torch.optim.Muon")
    add("")
    if args.quick:
        add("**`--quick` smoke run: shrunken sizes and 3 timing repeats; these are not the results.**")
        add("")
    add(
        f"- command: `python recipes/polar_error/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}` "
        "(`make bench-polar` runs it without flags)"
    )
    add(f"- git commit: {args.commit}; torch {torch.__version__}; numpy {np.__version__}")
    add(
        f"- hardware: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {args.timing_threads} "
        "for timing, 1 elsewhere; no GPU available to this run"
        if not torch.cuda.is_available()
        else f"- hardware: {cpu_model()}; GPU {torch.cuda.get_device_name()} (GPU table not implemented)"
    )
    add(
        f"- load average at start: {', '.join(f'{x:.1f}' for x in load_start)} "
        "(other jobs show up here; ratios are interleaved in one run, so they cancel)"
    )
    add(
        f"- wall time: {elapsed:.0f} s; iterations run in the dtype named (fp32 / bf16), errors measured "
        "in float64 against the float64 SVD polar factor; spectral norms by 8-vector subspace iteration"
    )
    add("")
    add("## Bars")
    add("")
    lines.extend(bars)
    add("")
    add("## 1. Spectral-norm error ||X_k - U V^T||_2 against iteration k")
    add("")
    add(
        "Plots: `polar_error.png`. `polar_express` = the paper's table (safety 1.01, prefactor 1.01; "
        "past its 8 steps the last tuple, Newton-Schulz, repeats); `polar_express_5` = the 5-step list, "
        "its last tuple "
        "repeated past step 5; "
        f"`{MATCHED}` = optimal_coefficients(l = {l_a:.3g}, {args.max_k} steps, cushion 0.0241, "
        "safety 1.01), "
        "l being the smallest singular value after normalising by ||G||_F * 1.01 + 1e-7. "
        f"(c) is {what_c}."
    )
    ks = [k for k in (1, 2, 3, 5, 8, 10, 12, 15, 20) if k <= args.max_k]
    for title, per_dtype in curves.items():
        for dname, recs in per_dtype.items():
            add("")
            add(f"### {title}, {dname}")
            add("")
            add(
                "| method | " + " | ".join(f"k={k}" for k in ks) + " | first k with error < 0.1 | "
                "singular values after 5 steps |"
            )
            add("|---|" + "---|" * (len(ks) + 2))
            for name, rec in recs.items():
                k01 = first_below(rec["err"], 0.1)
                lo, hi = rec["range5"]
                add(
                    f"| {name} | "
                    + " | ".join(_fmt(rec["err"][k - 1]) for k in ks)
                    + f" | {k01 if k01 is not None else f'never ({args.max_k})'} | [{lo:.3f}, {hi:.3f}] |"
                )
            ranking = sorted(recs, key=lambda m: recs[m]["err"][4])
            add("")
            add(f"Ranking at k = 5 (lowest error first): {', '.join(ranking)}.")
    add("")
    add("## 2. Worst case over normalised singular values in [1e-3, 1]")
    add("")
    add(
        "Float64 scalar composition applied to s / prefactor, s on a 400k-point grid "
        "(plot: `worst_case.png`):"
    )
    add("")
    add("| method | " + " | ".join(f"k={k}" for k in range(1, 9)) + " |")
    add("|---|" + "---|" * 8)
    for name, errs in scalar.items():
        add(f"| {name} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")
    add("")
    add(
        f"On {shape_wc[0]}x{shape_wc[1]} matrices with singular values geometric in [1e-3, 1] / prefactor, "
        "normalisation skipped (max_i |s_i(X_k) - 1|; in parentheses ||X_k - UV^T||_2):"
    )
    for dname, wc in matrix_wc.items():
        add("")
        add(f"| {dname} | " + " | ".join(f"k={k}" for k in range(1, 9)) + " |")
        add("|---|" + "---|" * 8)
        for name, rec in wc.items():
            add(
                f"| {name} | "
                + " | ".join(f"{a:.3f} ({b:.3f})" for a, b in zip(rec["sv"], rec["dist"], strict=True))
                + " |"
            )
    add("")
    add(
        "In bf16 the distance to U V^T has a floor (rounding mixes singular directions of nearly equal "
        "singular values); it is reported, not barred."
    )
    add("")
    add(
        "Greedy minimax compositions without cushion or safety, steps to bring the worst case over "
        "[1e-3, 1] below 1e-3 (matrix products per step: degree 3 -> 2, 5 -> 3, 7 -> 4):"
    )
    add("")
    add("| degree | steps | matrix products |")
    add("|---|---|---|")
    for d, k in degree_steps.items():
        add(f"| {d} | {k} | {None if k is None else k * (d // 2 + 1)} |")
    add("")
    add("## 3. Time per call, 5 steps, bf16, against torch.optim.Muon's iteration")
    add("")
    if not timing_rows:
        add("Skipped (--skip-timing).")
    else:
        add(
            "`orthogonalize(G, 'polar_express', 5, torch.bfloat16, check_finite=False, form=F, "
            "out_dtype=torch.bfloat16)` (per shape; bf16 out, as torch's iteration returns) and "
            "`orthogonalize_many` (all matrices of the pass, same arguments; it stacks same-shape matrices "
            "into one batched call on accelerators and, by default, calls once per matrix on CPU, where "
            "batching measured 1.09x slower on one thread), for F = `rectangular` (the default: the "
            "paper's iteration) and F = `auto` (Gram form where it needs fewer multiply-adds: the "
            "768x2304, 768x3072 and 3072x768 matrices; 768x768 stays rectangular; 35 m^3 instead of "
            "45 m^3 multiply-adds at aspect 4) "
            "against `torch.optim._muon._zeropower_via_newtonschulz` with "
            f"(3.4445, -4.7750, 2.0315), 5 steps, eps 1e-7; fp32 inputs; {repeats} interleaved repeats "
            "(order alternating), ratio = ours / torch per repeat. Plot: `timing.png`."
        )
        add("")
        add(
            "| matrices | form | ours (median ms) | torch.optim.Muon (median ms) | ratio median "
            "| ratio [min, max] | bar |"
        )
        add("|---|---|---|---|---|---|---|")
        for r in timing_rows:
            add(
                f"| {r['what']} | {r['form']} | {r['ours_ms']:.1f} | {r['torch_ms']:.1f} | "
                f"{r['ratio']:.3f} | [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}] | <= {r['bar']} |"
            )
    add("")
    add(
        "No GPU was available, so the issue's GPU table (torch.compile'd, sizes up to 8192, TFLOP/s) is not "
        "here."
        if not torch.cuda.is_available()
        else "GPU present, but the GPU table is not implemented."
    )
    add("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
