"""The polar-lightning command: print_config, subcommand dispatch, one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from polar_lightning.cli import main, one_line

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def run_module(*args: str, timeout: float = 80) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "polar_lightning", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["polar-lightning"])
    monkeypatch.chdir(ROOT)


@pytest.mark.slow
def test_print_config_via_python_m() -> None:
    result = run_module("fit", "--config", "configs/demo.yaml", "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["preset"] == "gpt2-tiny"
    assert "vocab_size" not in config["model"]  # linked from the data module at instantiation
    assert "run_info" in config


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,named",
    [
        (["--model.muon_lrr", "0.1"], "model.muon_lrr"),  # unknown key
        (["--model.muon_lr", "fast"], "model.muon_lr"),  # wrong type
        (["--model.preset", "gpt2-huge"], "gpt2-huge"),  # preset that does not exist
    ],
    ids=["unknown-key", "wrong-type", "bad-preset"],
)
def test_bad_input_is_one_line_via_console_script(args: list[str], named: str) -> None:
    script = shutil.which("polar-lightning", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "polar_lightning"]
    result = subprocess.run([*command, "fit", "--config", "configs/demo.yaml", *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=80)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("polar-lightning: error:") and named in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,named",
    [
        (["--trainer.max_stepz", "3"], "trainer.max_stepz"),
        (["--data.batch_size", "many"], "data.batch_size"),
        (["--model.polar_method", "newton"], "model.polar_method"),
        (["--model.n_layer", "0"], "n_layer"),  # rejected by GPTConfig at instantiation
        (["--config", "configs/nope.yaml"], "nope.yaml"),
        (["--trainer.max_steps", "5", "--model.warmup_steps", "9"], "warmup_steps"),
        (["--trainer.max_steps", "-1", "--trainer.max_epochs", "1"], "max_steps"),
    ],
)
def test_bad_input_in_process(args: list[str], named: str, argv, capsys: pytest.CaptureFixture) -> None:
    assert main(["fit", "--config", "configs/demo.yaml", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("polar-lightning: error:")]
    assert len(lines) == 1 and named in lines[0], err


def test_unknown_key_in_yaml_names_it(tmp_path: Path, argv, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: gpt2-tiny\n  warmup_stepz: 3\n")
    assert main(["fit", "--config", "configs/demo.yaml", "--config", str(bad), "--print_config"]) == 2
    err = capsys.readouterr().err
    assert "warmup_stepz" in err and len(err.strip().splitlines()) == 1


def test_one_line_flattens_parser_messages() -> None:
    message = 'Parser key "model.preset":\n  Expected a typing.Literal[\'a\', \'b\']. Got value: c'
    assert one_line(message) == "Parser key \"model.preset\": Expected one of 'a', 'b'. Got value: c"
    assert "\n" not in one_line("x\n" * 100) and len(one_line("y" * 1000)) <= 400


def test_prepare_dispatches_to_data_prepare(argv, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--help"])
    assert info.value.code == 0
    assert "prepare" in capsys.readouterr().out


@pytest.mark.slow
def test_fit_writes_run_record(tmp_path: Path, argv) -> None:
    """Two steps of the demo model: the log dir holds the resolved config and the run record."""
    code = main([
        "fit", "--config", "configs/demo.yaml",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
        "--model.n_layer", "1", "--model.n_embd", "64", "--model.n_head", "2", "--model.warmup_steps", "0",
        "--data.batch_size", "2", "--data.val_tokens", "1024", "--data.block_size", "32",
    ])
    assert code == 0
    (log_dir,) = [p for p in (tmp_path / "demo").iterdir() if p.is_dir()]
    config = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert config["model"]["n_layer"] == 1
    record = json.loads((log_dir / "run_info.json").read_text())
    assert record["packages"]["torch"] and record["packages"]["lightning"]
    assert record["hardware"]["cpu_count"] >= 1
    assert "commit" in record["git"]
    assert record["trainer"]["max_steps"] == 2
