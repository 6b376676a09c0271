"""Collect a sweep's runs into RESULTS-<preset>.md and PNG plots (called by sweep.py at its end).

    python recipes/polar_express_gpt2/report.py --preset tiny [--out-dir runs/sweep-tiny]

Final validation losses per method and learning rate, the best per method beside the paper's, the
differences against Jordan read seed by seed (same seed = same initialisation and data order), and the
polar error of the updates the optimizer actually applied (SpectralDiagnostics' ``polar_err_max``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules when run as a script

import plots  # noqa: E402
import rundata  # noqa: E402
from presets import BASELINE, METHOD_LABELS, PAPER, PAPER_SETUP, PRESETS, Preset  # noqa: E402

from polar_lightning.provenance import cpu_model

# Worst case of max |s - 1| over normalised singular values in [1e-3, 1] after the 5 polar iterations
# Muon runs (float64, shared/reference/polar-express.md, "error after k steps" table, k = 5).
REFERENCE_POLAR_ERROR_5 = {"jordan": 0.529, "you": 0.525, "polar_express": 0.160}
# A paired difference counts as resolved when |mean| exceeds this many standard errors over seeds
# (about a 95% two-sided interval for a normal mean; with 2-3 seeds it is only indicative).
RESOLVED_STANDARD_ERRORS = 2.0


@dataclass
class RunResult:
    """What one run left behind, finished or not."""

    method: str
    lr: float
    seed: int
    run_dir: Path
    status: str  # "finished", "failed" or "missing"
    record: dict[str, Any] = field(default_factory=dict)
    loss: float | None = None
    val: list[tuple[int, float]] = field(default_factory=list)
    train: list[tuple[int, float]] = field(default_factory=list)
    polar_max: list[tuple[int, float]] = field(default_factory=list)
    polar_median: list[tuple[int, float]] = field(default_factory=list)


def discover(out_dir: Path) -> list[tuple[str, float, int]]:
    """(method, lr, seed) of every run directory under ``out_dir`` that finished or failed."""
    found = []
    for marker in (rundata.RESULT_FILE, rundata.FAILED_FILE):
        for path in out_dir.glob(f"*/lr*/seed*/{marker}"):
            seed_dir, lr_dir, method_dir = path.parent, path.parent.parent, path.parent.parent.parent
            try:
                found.append((method_dir.name, float(lr_dir.name[2:]), int(seed_dir.name[4:])))
            except ValueError:
                continue
    return found


def collect(runs: list[Any], out_dir: Path) -> list[RunResult]:
    """One RunResult per planned run (``runs``: sweep.Run objects), plus runs found on disk that the
    plan does not name (e.g. from an earlier invocation with other --lrs)."""
    planned = {(r.method, r.lr, r.seed) for r in runs}
    extra = sorted({k for k in discover(out_dir) if k not in planned and k[0] in METHOD_LABELS})
    runs = list(runs) + [type(runs[0])(*k) for k in extra] if runs else []
    results = []
    for run in runs:
        run_dir = run.dir(out_dir)
        done = rundata.read_json(run_dir / rundata.RESULT_FILE)
        failed = rundata.read_json(run_dir / rundata.FAILED_FILE)
        status = "finished" if done else "failed" if failed else "missing"
        res = RunResult(run.method, run.lr, run.seed, run_dir, status, done or failed or {})
        if done:
            loss = done.get("final_val_loss")
            res.loss = float(loss) if loss is not None else math.nan
            rows = rundata.read_metrics(run_dir)
            res.val = rundata.curve(rows, rundata.VAL_KEY)
            res.train = rundata.curve(rows, rundata.TRAIN_KEY)
            res.polar_max = rundata.polar_error_curve(rows, "max")
            res.polar_median = rundata.polar_error_curve(rows, "median")
        results.append(res)
    return results


def finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def mean_sd(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    vals = finite(values)
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "nan" if value is not None and math.isnan(value) else "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def losses(results: list[RunResult], method: str, lr: float) -> dict[int, float]:
    """seed -> final validation loss of the finished runs of one method at one learning rate."""
    return {r.seed: r.loss for r in results
            if r.method == method and r.lr == lr and r.status == "finished" and r.loss is not None}


def best_lr(results: list[RunResult], method: str) -> float | None:
    """The learning rate with the lowest mean final loss over seeds (diverged runs never win)."""
    best, best_loss = None, math.inf
    for lr in sorted({r.lr for r in results if r.method == method}):
        seeds = losses(results, method, lr)
        mean, _, n = mean_sd(list(seeds.values()))
        if n and len(finite(list(seeds.values()))) == len(seeds) and mean < best_loss:
            best, best_loss = lr, mean
    return best


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a - b on the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b)) if math.isfinite(a[s]) and math.isfinite(b[s])]


def verdict(diffs: list[float]) -> str:
    mean, sd, n = mean_sd(diffs)
    if n < 2:
        return "one seed: no spread"
    se = sd / math.sqrt(n)
    if abs(mean) > RESOLVED_STANDARD_ERRORS * se:
        return f"resolved ({abs(mean) / se:.1f} SE)" if se > 0 else "resolved (identical sign, no spread)"
    return f"not resolved ({abs(mean) / se:.1f} SE)" if se > 0 else "not resolved"


def time_mean(curve: list[tuple[int, float]]) -> float:
    return statistics.fmean(v for _, v in curve) if curve else math.nan


def polar_summary(results: list[RunResult], method: str, lr: float | None) -> tuple[float, float, float]:
    """Mean over training of the polar error (max, median over matrices) and its last value, averaged
    over the seeds at ``lr``."""
    chosen = [r for r in results if r.method == method and r.lr == lr and r.polar_max]
    if not chosen:
        return math.nan, math.nan, math.nan
    return (statistics.fmean(time_mean(r.polar_max) for r in chosen),
            statistics.fmean(time_mean(r.polar_median) for r in chosen),
            statistics.fmean(r.polar_max[-1][1] for r in chosen))


def hardware_line(results: list[RunResult]) -> str:
    for r in results:
        info = rundata.read_json(r.run_dir / "run_info.json")
        if info and r.status == "finished":
            hw, pk = info.get("hardware", {}), info.get("packages", {})
            gpus = ", ".join(g["name"] for g in hw.get("gpus", [])) or "no GPU"
            tr = info.get("trainer", {})
            return (f"{cpu_model()}, {hw.get('cpu_count')} logical CPUs (torch threads "
                    f"{hw.get('torch_threads')}), {gpus}; {tr.get('world_size', 1)} rank(s), precision "
                    f"{tr.get('precision')}; torch {pk.get('torch')}, lightning {pk.get('lightning')}")
    return f"{cpu_model()} (no finished run to read run_info.json from)"


def section_summary(results: list[RunResult], methods: list[str], best: dict[str, float | None]) -> list[str]:
    """A few generated sentences: each method against the baseline at the best learning rates."""
    b_lr = best.get(BASELINE)
    if b_lr is None:
        return []
    out = ["## Summary (generated)", ""]
    base_polar = polar_summary(results, BASELINE, b_lr)[0]
    for m in methods:
        if m == BASELINE or best.get(m) is None:
            continue
        d = paired(losses(results, m, best[m]), losses(results, BASELINE, b_lr))
        if not d:
            continue
        mean, sd, n = mean_sd(d)
        line = (f"- {METHOD_LABELS[m]} − {METHOD_LABELS[BASELINE]} at their best learning rates "
                f"({best[m]:g} vs {b_lr:g}): {fmt(mean, 4, True)} ± {fmt(sd)} over {n} paired seed(s), "
                f"{verdict(d)}")
        polar = polar_summary(results, m, best[m])[0]
        if m != "adamw" and math.isfinite(polar) and math.isfinite(base_polar):
            line += f"; polar error of the updates {polar:.3f} vs {base_polar:.3f}"
        out.append(line + ".")
    return out + [""] if len(out) > 2 else []


def section_losses(results: list[RunResult], methods: list[str], best: dict[str, float | None]) -> list[str]:
    lrs = sorted({r.lr for r in results})
    out = ["## Final validation loss per method and learning rate", "",
           "Mean ± sample standard deviation over seeds (number of seeds); **bold**: the method's best "
           "learning rate. AdamW's column is its own learning rate (all parameters); the Muon methods' is "
           "the Muon rate (hidden matrices).", "",
           "| learning rate | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
           "|---:|" + "---:|" * len(methods)]
    for lr in lrs:
        cells = []
        for m in methods:
            seeds = losses(results, m, lr)
            if not any(r.method == m and r.lr == lr for r in results):
                cells.append("")
                continue
            mean, sd, n = mean_sd(list(seeds.values()))
            diverged = len(seeds) - n
            text = f"{fmt(mean)} ± {fmt(sd)} ({n})" if n else "-"
            if diverged:
                text += f", {diverged} diverged"
            cells.append(f"**{text}**" if best.get(m) == lr else text)
        out.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return out + [""]


def section_best(results: list[RunResult], preset: Preset, methods: list[str],
                 best: dict[str, float | None]) -> list[str]:
    paper = PAPER.get(preset.paper_row, {})
    base = paper.get(BASELINE)
    out = ["## Best per method, beside the paper", "",
           f"Paper: {preset.paper_row} ({PAPER_SETUP}).", "",
           "| method | best LR | final val loss (mean ± sd, n) | paper best (LR) | paper − paper Jordan |",
           "|---|---:|---:|---:|---:|"]
    for m in methods:
        lr = best.get(m)
        mean, sd, n = mean_sd(list(losses(results, m, lr).values())) if lr is not None else (math.nan, 0, 0)
        p = paper.get(m)
        ptext = "-" if p is None else f"{p[0]:.3f}" + (f" ({p[1]:g})" if p[1] is not None else "")
        pdiff = "-" if p is None or base is None else fmt(p[0] - base[0], 3, signed=True)
        lr_text = "-" if lr is None else f"{lr:g}"
        loss_text = f"{fmt(mean)} ± {fmt(sd)} ({n})" if n else "-"
        out.append(f"| {METHOD_LABELS[m]} | {lr_text} | {loss_text} | {ptext} | {pdiff} |")
    return out + [""]


def section_paired(results: list[RunResult], methods: list[str], best: dict[str, float | None]) -> list[str]:
    if BASELINE not in methods:
        return []
    base_name = METHOD_LABELS[BASELINE]
    out = [f"## Paired differences against {base_name} (same seed: same initialisation and data order)", "",
           f"Loss of the method minus {base_name}'s, seed by seed; negative: the method is better. "
           f"'Resolved' when |mean| > {RESOLVED_STANDARD_ERRORS:g} standard errors over seeds.", "",
           f"### At each method's best learning rate against {base_name} at its best", "",
           "| method | LRs | mean diff | sd | seeds | min .. max | verdict |",
           "|---|---|---:|---:|---:|---|---|"]
    b_lr = best.get(BASELINE)
    for m in methods:
        if m == BASELINE or best.get(m) is None or b_lr is None:
            continue
        d = paired(losses(results, m, best[m]), losses(results, BASELINE, b_lr))
        mean, sd, n = mean_sd(d)
        span = f"{fmt(min(d), 4, True)} .. {fmt(max(d), 4, True)}" if d else "-"
        out.append(f"| {METHOD_LABELS[m]} | {best[m]:g} vs {b_lr:g} | {fmt(mean, 4, True)} | {fmt(sd)} | {n} "
                   f"| {span} | {verdict(d)} |")
    out += ["", "### At the same learning rate (Muon methods)", "",
            "| method | LR | mean diff | sd | seeds | seeds better | verdict |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for m in methods:
        if m in (BASELINE, "adamw"):
            continue
        for lr in sorted({r.lr for r in results if r.method == m}):
            d = paired(losses(results, m, lr), losses(results, BASELINE, lr))
            if not d:
                continue
            mean, sd, n = mean_sd(d)
            better = sum(x < 0 for x in d)
            out.append(f"| {METHOD_LABELS[m]} | {lr:g} | {fmt(mean, 4, True)} | {fmt(sd)} | {n} "
                       f"| {better}/{n} | {verdict(d)} |")
    return out + [""]


def section_polar(results: list[RunResult], methods: list[str], best: dict[str, float | None]) -> list[str]:
    muon = [m for m in methods if m != "adamw"]
    if not any(r.polar_max for r in results):
        return ["## Polar error of the applied updates", "",
                "No polar error was logged (SpectralDiagnostics missing from the runs' callbacks).", ""]
    out = ["## Polar error of the applied updates", "",
           "max |s_i − 1| of the orthogonalised update over the momentum's singular directions above "
           "1e-3 of its largest (SpectralDiagnostics' `polar_err_max`), worst over the tracked hidden "
           "matrices at each sampled step, then averaged over training and seeds; 'median' is the median "
           "over matrices of their median |s_i − 1|. The reference column is the float64 worst case over "
           "[1e-3, 1] after 5 iterations. Unlike the loss, this difference between methods is not hidden "
           "by seed noise.", "",
           "| method | at best LR: max (mean over training) | median | last sample | over all LRs: max "
           "| reference worst case |", "|---|---:|---:|---:|---:|---:|"]
    for m in muon:
        pmax, pmed, plast = polar_summary(results, m, best.get(m))
        runs = [r for r in results if r.method == m and r.polar_max]
        if not runs:
            continue
        overall = statistics.fmean(time_mean(r.polar_max) for r in runs) if runs else math.nan
        ref = REFERENCE_POLAR_ERROR_5.get(m)
        ref_text = "-" if ref is None else f"{ref:.3f}"
        out.append(f"| {METHOD_LABELS[m]} | {fmt(pmax, 3)} | {fmt(pmed, 3)} | {fmt(plast, 3)} "
                   f"| {fmt(overall, 3)} | {ref_text} |")
    return out + [""]


def section_runs(results: list[RunResult], out_dir: Path) -> list[str]:
    done = [r for r in results if r.status == "finished"]
    failed = [r for r in results if r.status == "failed"]
    missing = [r for r in results if r.status == "missing"]
    walls = [r.record.get("wall_s", 0.0) for r in done]
    cpus = [r.record.get("cpu_s", 0.0) for r in done]
    loads = [r.record[k] for r in done for k in ("load_before", "load_after") if r.record.get(k) is not None]
    tokens = sorted({r.record.get("tokens") for r in done if r.record.get("tokens")})
    out = ["## Runs", "",
           f"- {len(done)} finished, {len(failed)} failed, {len(missing)} not run, of {len(results)} "
           f"planned; run directories under `{out_dir}`.",
           f"- Training tokens per run: {', '.join(f'{t:,}' for t in tokens) or '-'}.",
           f"- Wall time: {sum(walls) / 60:.1f} min in all (median run {statistics.median(walls):.0f} s)"
           if walls else "- Wall time: -",
           f"- CPU time of the runs: {sum(cpus) / 60:.1f} min; 1-minute load average around runs: "
           f"{min(loads):.1f} .. {max(loads):.1f}" if loads else "- CPU time: -"]
    if failed:
        out += ["", "### Failed runs", ""]
        for r in failed:
            tail = " / ".join(r.record.get("log_tail", [])[-2:]).replace("|", "\\|")
            out.append(f"- `{r.method}/lr{r.lr:g}/seed{r.seed}`: {r.record.get('error')}; log "
                       f"`{r.run_dir / rundata.LOG_FILE}`: {tail}")
    if missing:
        out += ["", "Not run yet: " + ", ".join(f"`{r.method}/lr{r.lr:g}/seed{r.seed}`" for r in missing)]
    stale = sorted({r.record.get("commit") for r in done} - {None})
    if len(stale) > 1:
        out += ["", f"Runs come from several commits: {', '.join(stale)}."]
    return out + [""]


def section_setup(preset: Preset, results: list[RunResult], out_dir: Path) -> list[str]:
    record = rundata.read_json(out_dir / "sweep.json") or {}
    calls = record.get("invocations", [])
    done = [r for r in results if r.status == "finished"]
    cfg = rundata.resolved_config(done[0].run_dir) if done else {}
    model = cfg.get("model", {})
    commits = sorted({r.record.get("commit") for r in done} - {None})
    example = done[0].record.get("command", "") if done else ""
    muon_cfg = next((rundata.resolved_config(r.run_dir) for r in done if r.method != "adamw"), {})
    aux_lr = muon_cfg.get("model", {}).get("adamw_lr", "-")
    argv = calls[-1]["argv"] if calls else ["sweep.py", "--preset", preset.name]
    make = f" (`make reproduce-{preset.name}`)" if argv[1:] == ["--preset", preset.name] else ""
    out = ["## Setup", "",
           f"- Preset `{preset.name}`: {preset.description}.",
           f"- Hardware: {hardware_line(results)}.",
           f"- Commit: {', '.join(commits) or '-'}.",
           f"- Model: preset {model.get('preset')}, polar steps {model.get('polar_steps')}, polar dtype "
           f"{model.get('polar_dtype')}, schedule {model.get('schedule')} (constant fraction "
           f"{model.get('constant_fraction')}, warm-up {model.get('warmup_steps')} steps), auxiliary "
           f"AdamW lr of the Muon runs (embeddings, head, gains, biases) {aux_lr}.",
           f"- Command: `python {' '.join(argv)}`{make}.",
           ]
    if len(calls) > 1:
        out.append(f"- The sweep was started {len(calls)} times (resumed); first at {calls[0]['started']}.")
    if example:
        out += ["- One run's command:", "", "```", example, "```"]
    return out + [""]


def write_report(preset: Preset, runs: list[Any], out_dir: Path, report_dir: Path) -> Path:
    """Write RESULTS-<preset>.md and its PNG plots into ``report_dir``; return the Markdown path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    results = collect(runs, out_dir)
    methods = [m for m in ("adamw", "jordan", "you", "polar_express") if any(r.method == m for r in results)]
    best = {m: best_lr(results, m) for m in methods}
    images = plots.write_all(results, best, methods, report_dir, preset.name)
    lines = [f"# Polar Express GPT-2 reproduction: preset `{preset.name}`", "",
             f"Written by `recipes/polar_express_gpt2/sweep.py` (report.py) from `{out_dir}`.", ""]
    lines += section_summary(results, methods, best)
    lines += section_setup(preset, results, out_dir)
    lines += section_losses(results, methods, best)
    lines += section_best(results, preset, methods, best)
    lines += section_paired(results, methods, best)
    lines += section_polar(results, methods, best)
    lines += section_runs(results, out_dir)
    if images:
        lines += ["## Plots", ""] + [f"![{title}]({path.name})" for title, path in images] + [""]
    path = report_dir / f"RESULTS-{preset.name}.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    from sweep import plan

    parser = argparse.ArgumentParser(description="Write RESULTS-<preset>.md from a sweep's run directories.")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out-dir", type=Path, default=None, help="default: runs/sweep-<preset>")
    parser.add_argument("--report-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    default = Path(__file__).resolve().parents[2] / "runs" / f"sweep-{preset.name}"
    out_dir = (args.out_dir or default).resolve()
    print(write_report(preset, plan(preset), out_dir, args.report_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
