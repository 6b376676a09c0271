"""Two gloo processes step MuonAdamW on the same parameters; rank 0 writes what it saw as JSON.

Run by tests/test_optim_distributed.py: ``python optim_gloo_split.py OUT.json PORT``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polar_lightning.optim import MuonAdamW
from polar_lightning.optim import muon_adamw as muon_adamw_module

WORLD = 2
SHAPES = [(12, 8), (8, 12), (12, 8), (10, 10), (6, 2, 2), (7,)]  # 3 polar stacks
STEPS = 3


def build(distributed: bool):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    groups = [
        {"params": params[:5], "algorithm": "muon", "lr": 0.05, "weight_decay": 0.1},
        {"params": params[5:], "algorithm": "adamw", "lr": 1e-2},
    ]
    return params, MuonAdamW(groups, polar_dtype="float32", method="polar_express", distributed=distributed)


def run(params, opt, on_step=None):
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)  # the same "all-reduced" gradient on every rank
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        if on_step is not None:
            on_step(step)


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    stacks: list[int] = []
    real = muon_adamw_module.orthogonalize

    def counting(x, *args, **kwargs):
        stacks.append(x.shape[0])  # matrices this rank orthogonalises in one call
        return real(x, *args, **kwargs)

    muon_adamw_module.orthogonalize = counting
    params, opt = build(distributed=True)
    equal_each_step = []

    def check(step: int) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        equal_each_step.append(all(torch.equal(gathered[0], t) for t in gathered))

    run(params, opt, check)
    muon_adamw_module.orthogonalize = real
    momenta = sum("momentum_buffer" in opt.state[p] for p in params[:5])
    if rank == 0:
        ref_params, ref_opt = build(distributed=False)
        run(ref_params, ref_opt)
        pairs = list(zip(params, ref_params, strict=True))
        diffs = [((a - b).abs().max() / b.abs().max()).item() for a, b in pairs]
        ref_momentum = [ref_opt.state[p]["momentum_buffer"] for p in ref_params[:5]]
        momentum_equal = all(
            torch.equal(opt.state[p]["momentum_buffer"], m)
            for p, m in zip(params[:5], ref_momentum, strict=True)
        )
        with open(out, "w") as f:
            json.dump({"stacks_per_step": stacks[: len(stacks) // STEPS], "equal_each_step": equal_each_step,
                       "relative_diffs": diffs, "momenta": momenta, "momentum_equal": momentum_equal}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=WORLD, join=True)
