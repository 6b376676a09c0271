"""Reproduce the Polar Express GPT-2 comparison: a sweep of LightningCLI runs, then a results report.

    python recipes/polar_express_gpt2/sweep.py --preset tiny            # = make reproduce-tiny
    python recipes/polar_express_gpt2/sweep.py --preset gpt2-small-1b --dry-run
    python recipes/polar_express_gpt2/sweep.py --preset tiny --methods jordan polar_express \\
        --lrs 0.005 --seeds 0 --out-dir /tmp/s -- --trainer.max_steps=4   # extra CLI overrides

Every run is ``python -m polar_lightning fit --config <base> --config configs/method/<m>.yaml --config
<sweep overrides>`` plus the learning rate, the seed and a CSV logger in the run's own directory
``<out-dir>/<method>/lr<lr>/seed<seed>/``. The same seed is ``seed_everything`` (initialisation) and
``data.seed`` (data order) for every method, so methods can be compared seed by seed.

A run that succeeded gets ``result.json`` (its final validation loss); a restarted sweep skips those,
so a killed sweep resumes where it stopped (presets with checkpoints resume the unfinished run from
its ``last.ckpt``). A failed run gets ``failed.json``, is listed in the report and makes the exit
status 1; it is tried again on the next start. Runs go seed by seed, so a sweep cut short by
``--budget`` or ``--max-runs`` still holds complete paired seeds.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules when run as a script

import rundata  # noqa: E402
from presets import METHODS, PRESETS, Preset  # noqa: E402

from polar_lightning.provenance import short_commit

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = Path(__file__).resolve().parent
SWEEP_RECORD = "sweep.json"


@dataclass(frozen=True)
class Run:
    """One training run of the sweep."""

    method: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/lr{self.lr:g}/seed{self.seed}"

    def dir(self, out_dir: Path) -> Path:
        return out_dir / self.method / f"lr{self.lr:g}" / f"seed{self.seed}"


def plan(
    preset: Preset,
    methods: list[str] | None = None,
    lrs: list[float] | None = None,
    seeds: list[int] | None = None,
) -> list[Run]:
    """The runs, seed by seed (a sweep cut short keeps whole paired seeds); within a seed, each method's
    first learning rate, then each one's second, ... (methods in preset order), so a cut leaves
    complete same-seed, same-rate pairs.

    ``methods``, ``lrs`` and ``seeds`` narrow or replace the preset's grid (``lrs`` and ``seeds`` apply
    to every chosen method).
    """
    chosen = list(preset.lrs) if methods is None else methods
    for method in chosen:
        if method not in preset.lrs:
            raise ValueError(f"method {method!r} is not in preset {preset.name!r} ({', '.join(preset.lrs)})")
    grid = {m: (tuple(lrs) if lrs else preset.lrs[m], tuple(seeds) if seeds else preset.seeds[m])
            for m in chosen}
    all_seeds = sorted({s for _, ss in grid.values() for s in ss})
    depth = max(len(g[0]) for g in grid.values())
    return [Run(m, grid[m][0][i], s) for s in all_seeds for i in range(depth) for m in chosen
            if i < len(grid[m][0]) and s in grid[m][1]]


def config_files(preset: Preset, method: str) -> list[str]:
    return [*preset.configs, METHODS[method][0], *preset.after_method]


def command(preset: Preset, run: Run, out_dir: Path, extra: list[str], python: str = sys.executable,
            ckpt_path: Path | None = None) -> list[str]:
    """The LightningCLI command of one run (config paths relative to the repository root)."""
    run_dir = run.dir(out_dir)
    cmd = [python, "-m", "polar_lightning", "fit"]
    for path in config_files(preset, run.method):
        cmd += ["--config", path]
    cmd += [
        f"--{METHODS[run.method][1]}={run.lr:g}",
        f"--seed_everything={run.seed}",
        f"--data.seed={run.seed}",
        # name and version empty: the logger writes straight into the run's directory.
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={run_dir}",
        "--trainer.logger.name=",
        "--trainer.logger.version=",
        f"--trainer.default_root_dir={run_dir}",
        *extra,
    ]
    if ckpt_path is not None:
        cmd.append(f"--ckpt_path={ckpt_path}")
    return cmd


def signature(preset: Preset, run: Run, extra: list[str]) -> str:
    """Hash of what decides a run's result: its arguments and the config files' contents."""
    h = hashlib.sha256()
    for path in config_files(preset, run.method):
        h.update(path.encode() + b"\0")
        try:
            h.update((REPO_ROOT / path).read_bytes())
        except OSError:
            h.update(b"<missing>")
    for arg in command(preset, run, Path("<out>"), extra, python="python")[1:]:
        h.update(arg.encode() + b"\0")
    return h.hexdigest()[:16]


def check_finished(run_dir: Path) -> tuple[float | None, int | None, str | None]:
    """(final validation loss, its step, error): the run must have validated at its last step."""
    val = rundata.curve(rundata.read_metrics(run_dir), rundata.VAL_KEY)
    if not val:
        return None, None, f"no {rundata.VAL_KEY} in {rundata.METRICS_FILE}"
    step, loss = val[-1]
    max_steps = rundata.resolved_config(run_dir).get("trainer", {}).get("max_steps")
    # The CSV logger files a validation after optimizer step k under step k - 1.
    if isinstance(max_steps, int) and max_steps > 0 and step + 1 < max_steps:
        return loss, step, (f"last validation at step {step + 1} of max_steps={max_steps} (stopped early, "
                            "e.g. by trainer.max_time, or val_check_interval does not divide max_steps)")
    return loss, step, None


def tokens_per_run(run_dir: Path) -> int | None:
    """Training tokens: max_steps x accumulated micro-batches x rows x block size x ranks (from the
    resolved config and run_info.json)."""
    cfg = rundata.resolved_config(run_dir)
    info = rundata.read_json(run_dir / "run_info.json") or {}
    try:
        world = int(info.get("trainer", {}).get("world_size", 1))
        accumulate = int(cfg["trainer"].get("accumulate_grad_batches") or 1)
        rows = int(cfg["data"]["batch_size"]) * accumulate * world
        return int(cfg["trainer"]["max_steps"]) * rows * int(cfg["data"]["block_size"])
    except (KeyError, TypeError, ValueError):
        return None


def prepare_run_dir(preset: Preset, run_dir: Path) -> Path | None:
    """Make the directory ready for a (re)start; returns the checkpoint to resume from, if any."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if preset.resume_from_checkpoint and last.is_file():
        current = run_dir / rundata.METRICS_FILE
        if current.is_file():  # the CSV logger would delete it: keep it as an earlier part
            n = len(list(run_dir.glob(rundata.METRICS_PART_PREFIX + "*.csv")))
            current.rename(run_dir / f"{rundata.METRICS_PART_PREFIX}{n}.csv")
        return last
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run without a checkpoint starts over
    run_dir.mkdir(parents=True)
    return None


def execute(preset: Preset, run: Run, out_dir: Path, extra: list[str], sig: str,
            timeout_s: float | None) -> dict:
    """Run one training run to completion; write result.json or failed.json; return the record."""
    run_dir = run.dir(out_dir)
    ckpt = prepare_run_dir(preset, run_dir)
    (run_dir / rundata.FAILED_FILE).unlink(missing_ok=True)
    cmd = command(preset, run, out_dir, extra, ckpt_path=ckpt)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    record = {"method": run.method, "lr": run.lr, "seed": run.seed, "command": shlex.join(cmd),
              "signature": sig, "commit": short_commit(), "resumed_from": str(ckpt) if ckpt else None,
              "load_before": os.getloadavg()[0]}
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (run_dir / rundata.LOG_FILE).open("a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout_s).returncode
            error = None if rc == 0 else f"exit status {rc}"
        except subprocess.TimeoutExpired:
            rc, error = None, f"killed after the per-run timeout of {timeout_s:.0f} s"
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    record.update(
        wall_s=round(time.perf_counter() - start, 1),
        cpu_s=round(usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime, 1),
        load_after=os.getloadavg()[0], returncode=rc,
        finished_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    if error is None:
        loss, step, error = check_finished(run_dir)
        record.update(final_val_loss=loss, final_val_step=step, tokens=tokens_per_run(run_dir))
    if error is not None:
        record.update(error=error, log_tail=rundata.log_tail(run_dir))
        rundata.write_json(run_dir / rundata.FAILED_FILE, record)
    else:
        rundata.write_json(run_dir / rundata.RESULT_FILE, record)
    return record


def record_invocation(out_dir: Path, preset: Preset, argv: list[str]) -> None:
    path = out_dir / SWEEP_RECORD
    data = rundata.read_json(path) or {"preset": preset.name, "invocations": []}
    data["invocations"].append({
        "argv": ["recipes/polar_express_gpt2/sweep.py", *argv],
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": short_commit(),
    })
    rundata.write_json(path, data)


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Arguments before ``--`` are the sweep's; after it, extra LightningCLI overrides for every run."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Sweep AdamW / Jordan / You / Polar Express over learning rates and paired seeds "
                    "through the LightningCLI, then write RESULTS-<preset>.md and plots. Arguments "
                    "after `--` are passed to every run (e.g. -- --trainer.max_steps=4).")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where run directories go (default: runs/sweep-<preset>)")
    parser.add_argument("--report-dir", type=Path, default=RECIPE_DIR,
                        help="where RESULTS-<preset>.md and the PNG plots go (default: beside this script)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=None,
                        help="only these methods (default: the preset's)")
    parser.add_argument("--lrs", nargs="+", type=float, default=None,
                        help="learning rates for every chosen method (default: the preset's per method)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="seeds for every chosen method (default: the preset's per method)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--max-runs", type=int, default=None, help="start at most this many runs")
    parser.add_argument("--budget", type=float, default=None,
                        help="minutes: start no run expected to end after this (median run time so far); "
                             "default: the preset's (tiny: 57), 'inf' for none")
    parser.add_argument("--run-timeout", type=float, default=None,
                        help="minutes: kill a run that takes longer (recorded as failed)")
    parser.add_argument("--force", action="store_true", help="rerun finished runs too")
    parser.add_argument("--report-only", action="store_true", help="write the report from existing runs")
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    args = parser.parse_args(argv)
    for name in ("max_runs", "budget", "run_timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = split_extra(argv)
    args = parse_args(own)
    preset = PRESETS[args.preset]
    runs = plan(preset, args.methods, args.lrs, args.seeds)
    out_dir = (args.out_dir or REPO_ROOT / "runs" / f"sweep-{preset.name}").resolve()
    needed = {p for r in runs for p in config_files(preset, r.method)}
    missing = sorted(p for p in needed if not (REPO_ROOT / p).is_file())
    if missing and not args.report_only:
        print(f"sweep.py: error: config files not found: {', '.join(missing)}", file=sys.stderr)
        return 2

    sigs = {r: signature(preset, r, extra) for r in runs}
    finished = {r for r in runs if (r.dir(out_dir) / rundata.RESULT_FILE).is_file() and not args.force}
    if args.dry_run:
        for r in runs:
            note = "# finished, skipped: " if r in finished else ""
            print(note + shlex.join(command(preset, r, out_dir, extra)))
        print(f"# {len(runs)} runs, {len(finished)} finished; out dir {out_dir}")
        return 0

    failures: list[dict] = []
    if not args.report_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        record_invocation(out_dir, preset, argv)
        for r in sorted(finished, key=runs.index):
            old = rundata.read_json(r.dir(out_dir) / rundata.RESULT_FILE) or {}
            if old.get("signature") != sigs[r]:
                tqdm.write(f"warning: {r.key} finished under other settings or config files; "
                           "kept (delete its directory or use --force to rerun)")
        todo = [r for r in runs if r not in finished]
        budget = args.budget if args.budget is not None else preset.budget_min
        start, walls, started = time.perf_counter(), [], 0
        bar = tqdm(total=len(runs), initial=len(finished), desc=f"sweep {preset.name}", unit="run")
        for r in todo:
            if args.max_runs is not None and started >= args.max_runs:
                tqdm.write(f"stopping: --max-runs {args.max_runs} reached")
                break
            elapsed = time.perf_counter() - start
            if budget is not None and walls and elapsed + statistics.median(walls) > budget * 60:
                tqdm.write(f"stopping: the next run would end after the {budget:g}-minute budget "
                           "(run the same command again to continue)")
                break
            bar.set_postfix_str(r.key)
            started += 1
            rec = execute(preset, r, out_dir, extra, sigs[r],
                          None if args.run_timeout is None else args.run_timeout * 60)
            walls.append(rec["wall_s"])
            if "error" in rec:
                failures.append(rec)
                tqdm.write(f"FAILED {r.key}: {rec['error']} (log: {r.dir(out_dir) / rundata.LOG_FILE})")
            else:
                tqdm.write(f"{r.key}: val loss {rec['final_val_loss']:.4f} in {rec['wall_s']:.0f} s")
            bar.update(1)
        bar.close()
        skipped = len(finished)
        print(f"sweep {preset.name}: {started} run(s) started, {skipped} skipped as finished, "
              f"{len(failures)} failed; runs in {out_dir}")

    if not args.no_report:
        from report import write_report

        path = write_report(preset, runs, out_dir, args.report_dir)
        print(f"report: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
