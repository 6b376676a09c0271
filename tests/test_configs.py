"""Every YAML under configs/ goes through the CLI parser (no training), so no config can rot."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import yaml

from polar_lightning.cli import build_cli
from polar_lightning.models import PRESETS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ALL_YAML = sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.y*ml"))
BASE = "configs/gpt2_small_fineweb.yaml"
LARGE = "configs/gpt2_large_fineweb.yaml"
METHODS = {
    "adamw": ("adamw", None),
    "jordan": ("muon", 0.01),
    "you": ("muon", 0.01),
    "polar_express": ("muon", 0.005),
}


@pytest.fixture(autouse=True)
def _argv_and_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # LightningCLI warns when given args while sys.argv also holds some (pytest's own).
    monkeypatch.setattr(sys, "argv", ["polar-lightning"])
    monkeypatch.chdir(ROOT)


def resolved(*configs: str, extra: tuple[str, ...] = ()) -> dict:
    """The config LightningCLI resolves for ``fit --config ...`` (``--print_config`` exits before
    anything is instantiated)."""
    args = ["fit"]
    for config in configs:
        args += ["--config", config]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        build_cli([*args, *extra, "--print_config"])
    assert info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_configs_exist() -> None:
    expected = {"configs/demo.yaml", BASE, LARGE} | {f"configs/method/{m}.yaml" for m in METHODS}
    assert expected <= set(ALL_YAML)


@pytest.mark.parametrize("config", ALL_YAML)
def test_every_yaml_parses_alone(config: str) -> None:
    cfg = resolved(config)
    assert cfg["model"]["preset"] in PRESETS


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("size", ["small", "large"])
def test_paper_stacks(method: str, size: str) -> None:
    configs = [BASE, f"configs/method/{method}.yaml"] + ([LARGE] if size == "large" else [])
    cfg = resolved(*configs)
    model, data, trainer = cfg["model"], cfg["data"], cfg["trainer"]
    optimizer, small_lr = METHODS[method]
    assert model["preset"] == f"gpt2-{size}"
    assert model["optimizer"] == optimizer
    if optimizer == "muon":
        assert model["polar_method"] == method
        assert model["muon_lr"] == (0.02 if size == "large" else small_lr)  # paper's best lrs
    assert model["polar_steps"] == 5 and model["schedule"] == "paper" and model["constant_fraction"] == 0.4
    assert trainer["precision"] == "bf16-mixed"
    assert data["block_size"] == 1024
    sequences_per_step = data["batch_size"] * trainer["accumulate_grad_batches"] * trainer["devices"]
    assert sequences_per_step == 32
    tokens = trainer["max_steps"] * sequences_per_step * data["block_size"]
    # 1B tokens, rounded up to a multiple of val_check_interval so the last validation is at the last step.
    assert 1e9 <= tokens < 1e9 + trainer["val_check_interval"] * sequences_per_step * data["block_size"]
    assert trainer["max_steps"] % trainer["val_check_interval"] == 0


def test_gram_form_variant_only_changes_the_form() -> None:
    stack = [BASE, "configs/method/polar_express.yaml"]
    base, variant = resolved(*stack), resolved(*stack, "configs/variant/gram_form.yaml")
    assert base["model"]["polar_form"] == "rectangular" and variant["model"]["polar_form"] == "auto"
    variant["model"]["polar_form"] = "rectangular"
    assert variant == base


def test_demo_is_cpu_tiny_on_the_sample() -> None:
    cfg = resolved("configs/demo.yaml")
    assert cfg["model"]["preset"] == "gpt2-tiny"
    assert cfg["data"]["dataset"] == "sample"
    assert cfg["trainer"]["accelerator"] == "cpu"
    assert cfg["trainer"]["enable_progress_bar"] is True
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert "polar_lightning.callbacks.SpectralDiagnostics" in callbacks


@pytest.mark.parametrize("configs", [("configs/demo.yaml",), (BASE, "configs/method/jordan.yaml", LARGE)])
def test_configs_instantiate(configs: tuple[str, ...], tmp_path: Path) -> None:
    """Trainer, callbacks, logger, data module and model build (the model shrunk to gpt2-tiny)."""
    cli = build_cli(
        [*[x for c in configs for x in ("--config", c)], "--model.preset", "gpt2-tiny",
         "--model.compile", "false", "--trainer.default_root_dir", str(tmp_path),
         "--trainer.logger.init_args.save_dir", str(tmp_path)],
        run=False,
    )
    assert cli.model.config.n_layer == PRESETS["gpt2-tiny"][0]
    assert cli.model.hparams.vocab_size == cli.datamodule.vocab_size  # linked
    names = {type(c).__name__ for c in cli.trainer.callbacks}
    assert {"RunInfo", "SpectralDiagnostics", "ModelCheckpoint", "LearningRateMonitor"} <= names
