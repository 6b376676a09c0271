"""RunInfo: record what produced a run (code, packages, hardware) and say where its outputs went.

The resolved config itself is written beside it as ``config.yaml`` by LightningCLI's SaveConfigCallback.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from polar_lightning.provenance import git_state, hardware, package_versions


class RunInfo(Callback):
    """Writes ``run_info.json`` (git commit, package versions, hardware, command) into the log dir at
    the start of fit, and prints where logs, checkpoints and plots went at its end.

    Args:
        filename: Name of the JSON file written into the trainer's log dir.
        summary: Print the output locations and the validation loss before/after at the end of fit.
    """

    def __init__(self, filename: str = "run_info.json", summary: bool = True) -> None:
        super().__init__()
        self.filename = filename
        self.summary = summary
        self.path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # collective under DDP: every rank asks
        if not trainer.is_global_zero or log_dir is None:
            return
        record = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "stage": stage,
            "argv": sys.argv,
            "git": git_state(),
            "packages": package_versions(),
            "hardware": hardware(),
            "trainer": {
                "accelerator": type(trainer.accelerator).__name__,
                "num_devices": trainer.num_devices,
                "num_nodes": trainer.num_nodes,
                "world_size": trainer.world_size,
                "strategy": type(trainer.strategy).__name__,
                "precision": str(trainer.precision),
                "max_steps": trainer.max_steps,
            },
        }
        self.path = Path(log_dir) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(record, indent=2) + "\n")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir
        if not (self.summary and trainer.is_global_zero):
            return
        lines = ["", "Run finished."]
        history = getattr(pl_module, "val_history", None)
        if history:
            (step0, first), (step1, last) = history[0], history[-1]
            lines.append(f"  validation loss: {first:.3f} (step {step0}) -> {last:.3f} (step {step1})")
        if log_dir is not None:
            lines.append(f"  logs and config:  {Path(log_dir).resolve()}")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            lines.append(f"  checkpoints:      {Path(checkpoint.dirpath).resolve()}")
            last = getattr(checkpoint, "last_model_path", "")
            if last:
                lines.append(f"    resume with:    --ckpt_path {last}")
        if log_dir is not None:
            plots = sorted(Path(log_dir).rglob("*.png"))
            if plots:
                folders = sorted({str(p.parent.resolve()) for p in plots})
                lines.append(f"  plots ({len(plots)} PNG): {', '.join(folders)}")
        rank_zero_info("\n".join(lines))
