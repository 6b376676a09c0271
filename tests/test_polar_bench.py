"""Smoke test of recipes/polar_error/bench.py (--quick) and a check of its spectral-norm estimator."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "recipes" / "polar_error" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("polar_error_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spectral_norm_estimate_agrees_with_svd() -> None:
    bench = _load_bench()
    gen = torch.Generator().manual_seed(0)
    for shape in [(40, 40), (30, 90), (90, 30)]:
        d = torch.randn(*shape, generator=gen, dtype=torch.float64)
        exact = float(torch.linalg.matrix_norm(d, ord=2))
        estimate, subspace = bench.spectral_norm(d)
        assert estimate == pytest.approx(exact, rel=1e-3) and estimate <= exact * (1 + 1e-12)
        # Warm-started from its own subspace, a slightly changed matrix needs few rounds.
        nearby = d + 1e-3 * torch.randn(*shape, generator=gen, dtype=torch.float64)
        warm, _ = bench.spectral_norm(nearby, subspace, iters=5)
        assert warm == pytest.approx(float(torch.linalg.matrix_norm(nearby, ord=2)), rel=1e-3)
    s = bench.singular_values(d)
    assert torch.allclose(s.sort().values, torch.linalg.svdvals(d).sort().values, atol=1e-10)


@pytest.mark.slow
def test_quick_bench_writes_results_and_plots(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out-dir", str(tmp_path)],
        cwd=BENCH.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=85,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text()
    for png in ("polar_error.png", "worst_case.png", "timing.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png
    for heading in ("## Bars", "## 1. Spectral-norm error", "## 2. Worst case", "## 3. Time per call"):
        assert heading in results
    assert "--quick" in results and "torch 2." in results
    # Every method has a row in every error table, with numbers in it.
    for method in ("polar_express", "polar_express_5", "jordan", "you", "newton_schulz", "(l matched)"):
        assert re.search(rf"\| [^|]*{re.escape(method)}[^|]* \| [0-9]", results), method
    # The float64 scalar bar cannot depend on machine load: it must hold even in the smoke run.
    assert re.search(r"float64 scalar map.*\*\*PASS\*\*", results)
    # The worst-case table reproduces the reference's figures (polar-express.md): Jordan k=5 0.529.
    row = next(line for line in results.split("## 2.")[1].splitlines() if line.startswith("| jordan |"))
    assert [cell.strip() for cell in row.strip("|").split("|")][5] == "0.529"
