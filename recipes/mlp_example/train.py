"""Reuse example: a small MLP classifier (not a GPT) trained with MuonAdamW in a few lines.

``python recipes/mlp_example/train.py [--max_steps 300]``: synthetic 4-class spirals, CPU, seconds.
The whole optimizer set-up is ``configure_optimizers`` below: hidden matrices go to Muon (Polar
Express), the input layer's bias, the output layer and all biases to AdamW.
"""

from __future__ import annotations

import argparse
import math

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polar_lightning.optim import MuonAdamW, muon_param_groups, warmup_constant_decay


def spirals(n: int = 2048, classes: int = 4, turns: float = 1.5, seed: int = 0) -> TensorDataset:
    """Points on ``classes`` interleaved noisy spiral arms of ``turns`` full turns: (x (n, 2), y (n,))."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (n,), generator=g)
    r = torch.rand(n, generator=g)
    angle = turns * 2.0 * math.pi * r + 2.0 * math.pi * label / classes + 0.2 * torch.randn(n, generator=g)
    x = torch.stack([r * angle.cos(), r * angle.sin()], dim=1)  # (n, 2)
    return TensorDataset(x, label)


class MLPClassifier(L.LightningModule):
    """A 3-layer MLP; any LightningModule can set up its optimizer the same way."""

    def __init__(self, hidden: int = 64, classes: int = 4, muon_lr: float = 0.02, adamw_lr: float = 3e-3,
                 warmup_steps: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, classes)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = MuonAdamW(muon_param_groups(self, muon_lr=hp.muon_lr, adamw_lr=hp.adamw_lr))
        schedule = warmup_constant_decay(hp.warmup_steps, self.trainer.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def accuracy(model: MLPClassifier, data: TensorDataset) -> float:
    x, y = data.tensors
    return (model(x).argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_steps", type=int, default=300)
    args = parser.parse_args()
    L.seed_everything(0)
    data = spirals()
    model = MLPClassifier()
    trainer = L.Trainer(max_steps=args.max_steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False)
    trainer.fit(model, DataLoader(data, batch_size=128, shuffle=True))
    print(f"train accuracy {accuracy(model, data):.3f}")


if __name__ == "__main__":
    main()
