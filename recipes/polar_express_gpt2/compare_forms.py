"""Paired comparison of two sweeps that differ in one setting (``make reproduce-tiny-gram-form``).

Each run of the variant sweep is matched with the run of the base sweep at the same method, learning
rate and seed (same initialisation, same data order), and the table reports both final validation
losses, their difference, the polar error of the applied updates and the CPU time of the whole run.
Made for the polar step's ``form`` (rectangular vs Gram), usable for any override passed to sweep.py
after ``--``.

Run from the repository root::

    python recipes/polar_express_gpt2/compare_forms.py --base runs/sweep-tiny \\
        --variant runs/sweep-tiny-gram-form --label "form auto"
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rundata  # noqa: E402  (the recipe's own helper, found through the path set above)

from polar_lightning.provenance import cpu_model, short_commit  # noqa: E402


def _median_polar_error(run_dir: Path) -> float | None:
    """Median over sampled steps of the worst polar error of any Muon matrix (None if not logged)."""
    values = [v for _, v in rundata.polar_error_curve(rundata.read_metrics(run_dir), "max")]
    return statistics.median(values) if values else None


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def pairs(base: Path, variant: Path) -> list[tuple[str, dict, dict, Path, Path]]:
    """(run key, base result, variant result, base dir, variant dir) for runs finished in both."""
    out = []
    for marker in sorted(variant.rglob(rundata.RESULT_FILE)):
        run_dir = marker.parent
        key = run_dir.relative_to(variant).as_posix()
        theirs = rundata.read_json(marker)
        ours = rundata.read_json(base / key / rundata.RESULT_FILE)
        if theirs is None:
            continue
        if ours is None:
            print(f"compare_forms.py: {key} has no finished run in {base}; skipped", file=sys.stderr)
            continue
        out.append((key, ours, theirs, base / key, run_dir))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="sweep out-dir of the reference runs")
    parser.add_argument("--variant", type=Path, required=True, help="sweep out-dir of the variant runs")
    parser.add_argument("--label", default="variant", help="what the variant changes, for the table")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    for name in ("base", "variant"):
        if not getattr(args, name).is_dir():
            parser.error(f"--{name} {getattr(args, name)} is not a directory")
    matched = pairs(args.base, args.variant)
    if not matched:
        parser.error(f"no run finished in both {args.base} and {args.variant}")

    lines = [
        f"# Paired runs: base vs {args.label}",
        "",
        "- command: `python recipes/polar_express_gpt2/compare_forms.py "
        + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        f"- commit of this report: {short_commit()}; variant runs' commits: "
        + ", ".join(sorted({str(t.get('commit')) for _, _, t, _, _ in matched})) + "; base runs' commits: "
        + ", ".join(sorted({str(o.get('commit')) for _, o, _, _, _ in matched})),
        f"- hardware: {cpu_model()}, {os.cpu_count()} logical CPUs; python {platform.python_version()}",
        "- pairs share method, learning rate, seed and data order; polar error = median over sampled "
        "steps of the worst |s_i - 1| of any Muon matrix (SpectralDiagnostics)",
        "",
        f"| run | val loss base | val loss {args.label} | difference | polar error base | "
        f"polar error {args.label} | CPU s base | CPU s {args.label} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    diffs = []
    for key, ours, theirs, base_dir, variant_dir in matched:
        a, b = ours.get("final_val_loss"), theirs.get("final_val_loss")
        diff = None if a is None or b is None else b - a
        if diff is not None:
            diffs.append(diff)
        err_a, err_b = _median_polar_error(base_dir), _median_polar_error(variant_dir)
        lines.append(
            f"| {key} | {_fmt(a)} | {_fmt(b)} | {_fmt(diff, '+.4f')} | "
            f"{_fmt(err_a, '.3f')} | {_fmt(err_b, '.3f')} | "
            f"{_fmt(ours.get('cpu_s'), '.0f')} | {_fmt(theirs.get('cpu_s'), '.0f')} |"
        )
    if diffs:
        spread = f" (min {min(diffs):+.4f}, max {max(diffs):+.4f})" if len(diffs) > 1 else ""
        middle = statistics.median(diffs)
        lines += ["", f"Median paired difference over {len(diffs)} runs: {middle:+.4f}{spread}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
