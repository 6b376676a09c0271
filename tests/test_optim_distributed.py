"""MuonAdamW under torch.distributed (gloo, CPU): work split, DDP and FSDP2 via Lightning, FSDP1 refused.

Multi-process runs go through standalone scripts in tests/scripts (Lightning's DDP launcher re-runs
sys.argv, which under pytest would be pytest itself).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polar_lightning.optim import distributed as D

SCRIPTS = Path(__file__).parent / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(name: str, *args: str, timeout: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_split_map_is_the_plain_map_without_a_process_group():
    stack = torch.randn(5, 3, 4)
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x * 2

    torch.testing.assert_close(D.split_map(stack, fn), stack * 2)
    assert calls == [5]  # one call on the whole stack, no padding, no collective


@pytest.mark.slow
def test_gloo_two_ranks_split_the_polar_work(tmp_path):
    out = tmp_path / "gloo.json"
    run_script("optim_gloo_split.py", str(out), str(free_port()), timeout=80)
    result = json.loads(out.read_text())
    # Stacks: 4 matrices of (8, 12) (tall ones transposed), (10, 10), (6, 4): each rank gets ceil(k / 2).
    assert sorted(result["stacks_per_step"]) == [1, 1, 2]
    assert result["equal_each_step"] == [True, True, True]
    assert max(result["relative_diffs"]) < 1e-5
    assert result["momenta"] == 5 and result["momentum_equal"]


@pytest.mark.slow
def test_fsdp1_flat_shards_are_refused_naming_model_parallel_strategy(tmp_path):
    out = tmp_path / "fsdp1.json"
    run_script("optim_fsdp1_refused.py", str(out), str(free_port()), timeout=80)
    result = json.loads(out.read_text())
    assert set(result) == {"orig=True", "orig=False"}
    for errors in result.values():
        for message in errors.values():
            assert message is not None and "ModelParallelStrategy" in message


def _lightning_run(strategy: str, tmp_path: Path) -> dict:
    run_script("optim_lightning_dist.py", strategy, str(tmp_path), timeout=85)
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow
def test_lightning_ddp_two_ranks_match_one_rank_and_checkpoint_every_momentum(tmp_path):
    result = _lightning_run("ddp", tmp_path)
    assert result["equal_each_step"] == [True, True, True]  # bitwise equal across ranks after every step
    assert result["match_1_rank"], result["max_abs_diff"]  # rtol 1e-4, atol 1e-6, polar step in float32
    # Rank 0's checkpoint holds every parameter's state, momentum included, with the right values.
    assert result["state_count"] == 6
    assert result["momentum_count"] == result["momentum_expected"] == 2
    assert result["momentum_match"]
    assert result["resume_match"], result["resume_max_abs_diff"]


@pytest.mark.slow
def test_lightning_fsdp2_matches_one_rank_and_resumes_through_the_strategy(tmp_path):
    result = _lightning_run("fsdp2", tmp_path)
    assert result["dtensor_params"]
    assert result["momentum_sharded"]
    assert result["match_1_rank"], result["max_abs_diff"]
    assert result["resume_match"], result["resume_max_abs_diff"]
