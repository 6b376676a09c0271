"""FSDP1 (FullyShardedDataParallel) on 2 gloo ranks: MuonAdamW and muon_param_groups must refuse it.

Lightning's FSDPStrategy needs a GPU, so this wraps the model with torch's FSDP1 directly, as that
strategy does. ``python optim_fsdp1_refused.py OUT.json PORT``; rank 0 writes the error messages.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import FullyShardedDataParallel

from polar_lightning.optim import MuonAdamW, muon_param_groups


def error_of(fn) -> str | None:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return None


def worker(rank: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    for use_orig_params in (True, False):
        model = FullyShardedDataParallel(
            torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2)),
            use_orig_params=use_orig_params, device_id=torch.device("cpu"),
        )
        params = list(model.parameters())
        result[f"orig={use_orig_params}"] = {
            "param_groups": error_of(lambda model=model: muon_param_groups(model)),
            # A user who routes by hand would see only 1-D tensors and send them all to AdamW.
            "adamw_group": error_of(
                lambda params=params: MuonAdamW([{"params": params, "algorithm": "adamw"}])
            ),
        }
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
