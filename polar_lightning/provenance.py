"""What produced a result: git commit, package versions, CPU and GPU. Used by RunInfo and the recipes."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

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
    """Platform, CPU, torch threads and GPUs of this process."""
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


def short_commit(path: Path | None = None) -> str:
    """Short HEAD commit, with ``+dirty`` for uncommitted changes; "unknown" outside git."""
    state = git_state(path)
    if state["commit"] is None:
        return "unknown"
    return state["commit"][:7] + ("+dirty" if state["dirty"] else "")
