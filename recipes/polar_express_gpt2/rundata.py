"""Reading one sweep run's directory: its markers, the CSV logger's metrics and the resolved config.

A run directory holds what the LightningCLI wrote (``metrics.csv``, ``config.yaml``, ``run_info.json``)
plus the sweep's own files: ``train.log`` (the run's stdout and stderr), ``result.json`` (written only
after the run succeeded: the marker that makes a restarted sweep skip it) or ``failed.json``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

RESULT_FILE = "result.json"
FAILED_FILE = "failed.json"
LOG_FILE = "train.log"
METRICS_FILE = "metrics.csv"
# A run resumed from a checkpoint moves its earlier metrics.csv aside under this prefix (the CSV
# logger deletes a metrics.csv it finds in its directory).
METRICS_PART_PREFIX = "metrics.part"
VAL_KEY = "val/loss"
TRAIN_KEY = "train/loss"
POLAR_MAX_SUFFIX = "/polar_err_max"
POLAR_MEDIAN_SUFFIX = "/polar_err_median"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is missing or unreadable (a half-written file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a sweep killed mid-write never leaves a marker that parses."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def metrics_files(run_dir: Path) -> list[Path]:
    """Earlier parts (oldest first), then the current metrics.csv."""
    parts = sorted(run_dir.glob(METRICS_PART_PREFIX + "*.csv"),
                   key=lambda p: int(p.stem.removeprefix(METRICS_PART_PREFIX) or 0))
    current = run_dir / METRICS_FILE
    return parts + ([current] if current.is_file() else [])


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """Every logged row as {name: value} (empty cells dropped), parts in order."""
    rows: list[dict[str, float]] = []
    for path in metrics_files(run_dir):
        with path.open(newline="") as f:
            for raw in csv.DictReader(f):
                row = {}
                for key, value in raw.items():
                    if key is None or value in (None, ""):
                        continue
                    try:
                        row[key] = float(value)
                    except ValueError:
                        continue
                if "step" in row:
                    rows.append(row)
    return rows


def curve(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric; a step logged twice (a resumed run) keeps its last value."""
    points: dict[int, float] = {}
    for row in rows:
        if key in row:
            points[int(row["step"])] = row[key]
    return sorted(points.items())


def polar_error_curve(rows: list[dict[str, float]], reduce: str = "max") -> list[tuple[int, float]]:
    """Per sampled step, the polar error of the Muon updates over every tracked matrix.

    ``reduce="max"``: the largest ``polar_err_max`` (worst direction of any matrix);
    ``reduce="median"``: the median over matrices of their ``polar_err_median``.
    """
    if reduce not in ("max", "median"):
        raise ValueError(f"reduce must be 'max' or 'median', got {reduce!r}")
    suffix = POLAR_MAX_SUFFIX if reduce == "max" else POLAR_MEDIAN_SUFFIX
    by_step: dict[int, list[float]] = {}
    for row in rows:
        values = [v for k, v in row.items() if k.endswith(suffix) and math.isfinite(v)]
        if values:
            by_step.setdefault(int(row["step"]), []).extend(values)
    out = []
    for step, values in sorted(by_step.items()):
        values.sort()
        out.append((step, values[-1] if reduce == "max" else values[len(values) // 2]))
    return out


def resolved_config(run_dir: Path) -> dict[str, Any]:
    """The config the CLI resolved and saved for this run (empty if it never got that far)."""
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def log_tail(run_dir: Path, lines: int = 5) -> list[str]:
    """The last non-empty lines of the run's log (the error of a failed run)."""
    try:
        text = (run_dir / LOG_FILE).read_text(errors="replace")
    except OSError:
        return []
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return kept[-lines:]
