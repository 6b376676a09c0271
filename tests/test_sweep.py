"""The reproduction sweep (recipes/polar_express_gpt2/sweep.py) end to end on a micro model.

One test drives the real script as a user would: two LightningCLI runs of a 1-layer model for a few
steps, then a restart that must skip them and record a run that fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "polar_express_gpt2" / "sweep.py"
# A model and data small enough that a run is dominated by start-up (a few seconds of CPU).
MICRO = [
    "--model.n_layer=1", "--model.n_embd=32", "--model.n_head=2", "--model.warmup_steps=0",
    "--data.block_size=16", "--data.batch_size=2", "--data.val_batch_size=2", "--data.val_tokens=68",
    "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
]


def _load(name: str):
    """Import a module of the recipe under its plain name, as the scripts import their siblings."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT.parent))


def _sweep(args: list[str], timeout: float = 80) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_plan_is_seed_major_and_paired():
    sweep = _load("sweep")
    presets = _load("presets")
    preset = presets.PRESETS["tiny"]
    runs = sweep.plan(preset)
    seeds = [r.seed for r in runs]
    assert seeds == sorted(seeds), "runs must go seed by seed so a cut-short sweep keeps whole seeds"
    keys = {(r.method, r.lr, r.seed) for r in runs}
    for r in runs:  # every polar run has its Jordan run with the same seed and learning rate
        if r.method in ("you", "polar_express"):
            assert ("jordan", r.lr, r.seed) in keys
    assert len({r.seed for r in runs if r.method == "polar_express"}) >= 2, "PE vs Jordan needs paired seeds"
    assert len(runs) == sum(len(preset.lrs[m]) * len(preset.seeds[m]) for m in preset.lrs)
    assert len(set(runs)) == len(runs)
    with pytest.raises(ValueError, match="rmsprop"):
        sweep.plan(presets.PRESETS["tiny"], methods=["rmsprop"])


def test_command_pairs_seed_and_sets_lr_key(tmp_path):
    sweep = _load("sweep")
    presets = _load("presets")
    preset = presets.PRESETS["tiny"]
    adamw = sweep.command(preset, sweep.Run("adamw", 1e-3, 7), tmp_path, [])
    muon = sweep.command(preset, sweep.Run("polar_express", 0.005, 7), tmp_path, ["--trainer.max_steps=3"])
    for cmd in (adamw, muon):
        assert "--seed_everything=7" in cmd and "--data.seed=7" in cmd
    assert "--model.adamw_lr=0.001" in adamw and "--model.muon_lr=0.005" in muon
    assert muon[-1] == "--trainer.max_steps=3", "extra overrides must come last so they win"
    assert f"--trainer.logger.save_dir={tmp_path / 'polar_express' / 'lr0.005' / 'seed7'}" in muon
    # different seeds or learning rates never share a directory
    assert sweep.Run("jordan", 0.005, 0).dir(tmp_path) != sweep.Run("jordan", 0.005, 1).dir(tmp_path)


def test_polar_error_curve_takes_worst_matrix():
    rundata = _load("rundata")
    rows = [
        {"step": 0.0, "spectral/a/polar_err_max": 0.2, "spectral/b/polar_err_max": 0.5,
         "spectral/a/polar_err_median": 0.1, "spectral/b/polar_err_median": 0.3},
        {"step": 1.0, "train/loss": 3.0},
        {"step": 7.0, "spectral/a/polar_err_max": 0.4, "spectral/b/polar_err_max": float("nan")},
    ]
    assert rundata.polar_error_curve(rows, "max") == [(0, 0.5), (7, 0.4)]
    assert rundata.polar_error_curve(rows, "median")[0] == (0, 0.3)
    assert rundata.curve(rows, "train/loss") == [(1, 3.0)]


def _fake_run(root: Path, key: str, loss: float, polar_errors: list[float], cpu_s: float) -> None:
    run = root / key
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"final_val_loss": loss, "cpu_s": cpu_s, "commit": "abc"}))
    lines = ["step,spectral/h.0/polar_err_max"] + [f"{10 * i},{e}" for i, e in enumerate(polar_errors)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_compare_forms_pairs_runs_by_key(tmp_path, capsys):
    compare = _load("compare_forms")
    base, variant = tmp_path / "base", tmp_path / "variant"
    _fake_run(base, "polar_express/lr0.01/seed0", 5.0, [0.3, 0.5, 0.4], 100)
    _fake_run(base, "polar_express/lr0.01/seed1", 6.0, [0.3], 100)
    _fake_run(variant, "polar_express/lr0.01/seed0", 5.25, [0.2, 0.6, 0.6], 80)
    _fake_run(variant, "polar_express/lr0.01/seed1", 5.5, [0.1], 90)
    _fake_run(variant, "jordan/lr0.01/seed0", 5.0, [0.6], 90)  # no base run: skipped, said so
    out = tmp_path / "table.md"
    assert compare.main(["--base", str(base), "--variant", str(variant), "--label", "gram",
                         "--out", str(out)]) == 0
    text = out.read_text()
    assert "| polar_express/lr0.01/seed0 | 5.0000 | 5.2500 | +0.2500 | 0.400 | 0.600 | 100 | 80 |" in text
    assert "| polar_express/lr0.01/seed1 | 6.0000 | 5.5000 | -0.5000 | 0.300 | 0.100 | 100 | 90 |" in text
    assert "jordan" not in text and "jordan/lr0.01/seed0 has no finished run" in capsys.readouterr().err
    assert "Median paired difference over 2 runs: -0.1250 (min -0.5000, max +0.2500)." in text
    with pytest.raises(SystemExit):
        compare.main(["--base", str(tmp_path / "missing"), "--variant", str(variant)])


def test_dry_run_prints_every_command(tmp_path):
    proc = _sweep(["--preset", "gpt2-small-1b", "--dry-run", "--out-dir", str(tmp_path)], timeout=60)
    if proc.returncode == 2 and "config files not found" in proc.stderr:
        pytest.fail(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if "polar_lightning fit" in line]
    assert len(commands) == 16  # 4 methods x 4 learning rates x 1 seed
    assert not any(tmp_path.iterdir()), "a dry run must not create run directories"


@pytest.mark.slow
def test_micro_sweep_runs_reports_resumes_and_records_failures(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "report"
    common = ["--preset", "tiny", "--seeds", "0", "--out-dir", str(out), "--report-dir", str(report)]
    first = _sweep([*common, "--methods", "jordan", "polar_express", "--lrs", "0.01", "--", *MICRO])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]

    results = {}
    for method in ("jordan", "polar_express"):
        run_dir = out / method / "lr0.01" / "seed0"
        for name in ("metrics.csv", "config.yaml", "run_info.json", "train.log", "result.json"):
            assert (run_dir / name).is_file(), f"{run_dir / name} missing"
        results[method] = json.loads((run_dir / "result.json").read_text())
        assert math.isfinite(results[method]["final_val_loss"])
        assert results[method]["final_val_step"] == 3  # validated after the 4th (last) step
        assert "--seed_everything=0" in results[method]["command"]
    text = (report / "RESULTS-tiny.md").read_text()
    assert "| learning rate | Jordan | Polar Express |" in text
    row = next(line for line in text.splitlines() if line.startswith("| 0.01 |"))
    assert f"{results['jordan']['final_val_loss']:.4f}" in row
    assert f"{results['polar_express']['final_val_loss']:.4f}" in row
    assert "Paired differences against Jordan" in text and "Polar error of the applied updates" in text
    assert (report / "tiny-val_loss_vs_lr.png").stat().st_size > 0

    # Restart with one more learning rate for Jordan: the finished run is skipped (untouched), and the
    # new run fails (the module rejects a negative rate), which is recorded and reported.
    marker = out / "jordan" / "lr0.01" / "seed0" / "result.json"
    stamp = marker.stat().st_mtime_ns
    second = _sweep([*common, "--methods", "jordan", "--lrs", "0.01", "-1", "--", *MICRO])
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-3000:]
    assert "1 run(s) started, 1 skipped as finished, 1 failed" in second.stdout
    assert marker.stat().st_mtime_ns == stamp
    failed = json.loads((out / "jordan" / "lr-1" / "seed0" / "failed.json").read_text())
    assert failed["error"].startswith("exit status") and failed["log_tail"]
    assert not (out / "jordan" / "lr-1" / "seed0" / "result.json").exists()
    text = (report / "RESULTS-tiny.md").read_text()
    assert "### Failed runs" in text and "jordan/lr-1/seed0" in text
    assert "| Polar Express |" in text, "runs found on disk stay in the report"
