"""MuonAdamW inside Lightning on 2 CPU ranks (gloo): DDP, FSDP2 (ModelParallelStrategy) or FSDP1.

``python optim_lightning_dist.py {ddp,fsdp2} OUT_DIR``. Rank 0 writes OUT_DIR/result.json:
- ddp / fsdp2: 3 steps on 2 ranks (4 samples each) against a plain single-process loop over the same
  global batches of 8 (polar step in float32); then a checkpoint written through the strategy is
  resumed for a 4th step and compared with 4 single-process steps. DDP also checks that parameters are
  bitwise equal across ranks after every step and that the checkpoint holds every momentum.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from polar_lightning.optim import MuonAdamW, muon_param_groups

GLOBAL_BATCH, WORLD, STEPS = 8, 2, 3
MUON = {"polar_dtype": "float32", "method": "polar_express"}


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3))


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    n = GLOBAL_BATCH * 4
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g))


def make_optimizer(model: nn.Module, distributed: bool = True) -> MuonAdamW:
    groups = muon_param_groups(model, muon_lr=0.05, adamw_lr=1e-2, muon_weight_decay=0.01, muon_options=MUON)
    return MuonAdamW(groups, distributed=distributed)


class Module(L.LightningModule):
    def __init__(self, strategy: str) -> None:
        super().__init__()
        self.strategy_name = strategy
        self.net = make_model()
        self.equal_each_step: list[bool] = []

    def configure_model(self) -> None:
        if self.strategy_name != "fsdp2":
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def train_dataloader(self) -> DataLoader:
        # This rank's interleaved share (what an unshuffled DistributedSampler gives): the union of the
        # ranks' step-s batches is samples [8 s, 8 s + 8), the reference's global batch.
        rank, world = self.global_rank, self.trainer.world_size
        share = Subset(data(), list(range(rank, GLOBAL_BATCH * 4, world)))
        return DataLoader(share, batch_size=GLOBAL_BATCH // world, shuffle=False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.strategy_name != "ddp":
            return
        flat = torch.cat([p.detach().reshape(-1) for p in self.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        self.equal_each_step.append(all(torch.equal(gathered[0], t) for t in gathered))

    def configure_optimizers(self):
        return make_optimizer(self)


def reference(batches: list[int]) -> tuple[list[torch.Tensor], MuonAdamW, nn.Module]:
    """Single process, no communication, one step per global batch index in ``batches``."""
    model = make_model()
    opt = make_optimizer(model, distributed=False)
    x, y = data().tensors
    for s in batches:
        xb, yb = x[s * GLOBAL_BATCH : (s + 1) * GLOBAL_BATCH], y[s * GLOBAL_BATCH : (s + 1) * GLOBAL_BATCH]
        opt.zero_grad()
        nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt, model


def full_params(module: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in module.parameters()]


def compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, want, strict=True))


def trainer(strategy_name: str, max_steps: int, root: Path) -> L.Trainer:
    if strategy_name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1)
    else:
        strategy = "ddp"
    return L.Trainer(
        accelerator="cpu", devices=WORLD, strategy=strategy, max_steps=max_steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, num_sanity_val_steps=0, use_distributed_sampler=False,
    )


def main() -> None:
    strategy_name, out = sys.argv[1], Path(sys.argv[2])
    result: dict = {}
    module = Module(strategy_name)
    t = trainer(strategy_name, STEPS, out)
    t.fit(module)
    got = full_params(module)
    ckpt = out / "ckpt"
    t.save_checkpoint(ckpt)
    want, ref_opt, ref_model = reference(list(range(STEPS)))
    result["match_1_rank"] = compare(got, want)
    result["max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(got, want, strict=True))
    result["equal_each_step"] = module.equal_each_step
    if strategy_name == "fsdp2":
        from torch.distributed.tensor import DTensor

        opt = t.optimizers[0]
        bufs = [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]
                if "momentum_buffer" in opt.state[p]]
        result["dtensor_params"] = all(isinstance(p, DTensor) for p in module.parameters())
        result["momentum_sharded"] = len(bufs) == 2 and all(
            isinstance(b, DTensor) and b.to_local().shape[0] < b.shape[0] for b in bufs
        )
    if strategy_name == "ddp" and t.global_rank == 0:
        state = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["state"]
        ref_state = [ref_opt.state[p] for p in ref_model.parameters()]
        # Checkpoint indices follow the groups' parameter order; map them back to the model's.
        order = [p for g in ref_opt.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(order)}
        result["momentum_count"] = sum("momentum_buffer" in s for s in state.values())
        result["momentum_expected"] = sum("momentum_buffer" in s for s in ref_state)
        result["momentum_match"] = all(
            torch.allclose(state[index[id(p)]]["momentum_buffer"], ref_opt.state[p]["momentum_buffer"],
                           rtol=1e-4, atol=1e-6)
            for p in ref_model.parameters() if "momentum_buffer" in ref_opt.state[p]
        )
        result["state_count"] = len(state)

    resumed = Module(strategy_name)
    t2 = trainer(strategy_name, STEPS + 1, out)
    t2.fit(resumed, ckpt_path=ckpt)
    # The plain DataLoader is not resumable: the resumed epoch starts again from global batch 0.
    want4, _, _ = reference([*range(STEPS), 0])
    got4 = full_params(resumed)
    result["resume_match"] = compare(got4, want4)
    result["resume_max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(got4, want4, strict=True))
    if t2.global_rank == 0:
        (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
