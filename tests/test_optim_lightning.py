"""MuonAdamW inside a Lightning Trainer: clipping, accumulation, bf16-mixed, LR monitor, reuse example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polar_lightning.optim import MuonAdamW, muon_param_groups, warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
CLIP = 0.05  # small enough that every step of the toy problem is clipped


class MemoryLogger(Logger):
    """Keeps every logged metric dict in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))


class Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16))
        self.head = nn.Linear(16, 10)
        self.clipped_norms: list[float] = []
        self.steps = 0
        self.param_dtypes: set[torch.dtype] = set()

    def training_step(self, batch, batch_idx):
        (x,) = batch
        logits = self.head(self.body(self.emb(x)))  # (B, T, 10), bf16 under autocast
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), ((x + 1) % 10).flatten())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.clipped_norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    def on_before_optimizer_step(self, optimizer) -> None:
        self.steps += 1
        self.param_dtypes |= {p.dtype for p in self.parameters()} | {p.grad.dtype for p in self.parameters()}

    def configure_optimizers(self):
        optimizer = MuonAdamW(muon_param_groups(self, muon_lr=0.02, adamw_lr=1e-2))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1, self.trainer.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def test_trainer_with_clipping_accumulation_bf16_and_lr_monitor(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logger = MemoryLogger()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=3, accumulate_grad_batches=2, gradient_clip_val=CLIP,
        precision="bf16-mixed", logger=logger, callbacks=[LearningRateMonitor(logging_interval="step")],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, log_every_n_steps=1,
    )
    data = TensorDataset(torch.randint(0, 10, (64, 4)))
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert model.steps == 3  # 6 batches, accumulated in pairs
    assert len(model.clipped_norms) == 3 and max(model.clipped_norms) <= CLIP * (1 + 1e-3)
    assert model.param_dtypes == {torch.float32}  # bf16-mixed keeps fp32 parameters and gradients
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    lr_keys = {k for m in logger.metrics for k in m if k.startswith("lr-")}
    assert lr_keys == {"lr-MuonAdamW/muon", "lr-MuonAdamW/adamw", "lr-MuonAdamW/adamw_no_decay"}
    muon_lrs = [m["lr-MuonAdamW/muon"] for m in logger.metrics if "lr-MuonAdamW/muon" in m]
    assert muon_lrs[0] == 0.02 and muon_lrs[-1] < 0.02  # the schedule scales the group's own lr


def _load_example():
    path = ROOT / "recipes" / "mlp_example" / "train.py"
    spec = importlib.util.spec_from_file_location("mlp_example_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~15 s on the shared 2-core machine: too close to the 20 s budget
def test_mlp_example_trains_with_muon_adamw():
    example = _load_example()
    L.seed_everything(0)
    data = example.spirals(n=512, turns=0.25)  # nearly separable: learnt in a few dozen steps
    model = example.MLPClassifier(hidden=32, warmup_steps=2)
    x, y = data.tensors
    with torch.no_grad():
        loss_before = nn.functional.cross_entropy(model(x), y).item()
    trainer = L.Trainer(max_steps=40, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(data, batch_size=128, shuffle=True))
    assert isinstance(trainer.optimizers[0], MuonAdamW)
    with torch.no_grad():
        loss_after = nn.functional.cross_entropy(model(x), y).item()
    assert loss_after < 0.8 * loss_before
