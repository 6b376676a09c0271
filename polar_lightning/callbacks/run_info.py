"""RunInfo: record what produced a run (code, packages, hardware) and say where its outputs went.

The resolved config itself is written beside it as ``config.yaml`` by LightningCLI's SaveConfigCallback.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

# Packages whose versions decide a run's numbers (numerics, data pipeline, tokenisation, config parsing).
TRACKED_PACKAGES = (
    "polar_lightning", "torch", "lightning", "torchmetrics", "jsonargparse", "datasets", "tiktoken",
    "numpy",
)


def git_state(path: Path | None = None) -> dict[str, Any]:
    """Commit hash and whether the working tree has uncommitted changes, for the repo holding ``path``."""
    cwd = Path(__file__).resolve().parent if path is None else path
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str | None:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


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
