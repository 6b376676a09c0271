"""GPT2Module under a real Trainer at tiny scale: optimisation, metrics, schedules, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from polar_lightning.module import GPT2Module, peak_bf16_flops
from polar_lightning.optim import MuonAdamW

VOCAB, T = 101, 16
TINY = dict(n_layer=2, n_head=2, n_embd=32, context_length=T, vocab_size=VOCAB)


@pytest.fixture(autouse=True)
def _threads():
    # Fixed thread count: reductions then run in the same order every time (exact-resume test).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sequences(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, T + 1), generator=torch.Generator().manual_seed(seed))  # (n, T+1)


def trainer(tmp_path: Path, max_steps: int, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return L.Trainer(max_steps=max_steps, **defaults)


class LossRecorder(Callback):
    """Training loss of each optimizer step, keyed by the global step it produced."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = outputs["loss"].item()


@pytest.mark.parametrize(
    "optimizer,method", [("muon", "polar_express"), ("muon", "jordan"), ("adamw", "you")]
)
def test_training_fits_a_fixed_batch(tmp_path: Path, optimizer: str, method: str) -> None:
    torch.manual_seed(0)
    batch = sequences(4)
    module = GPT2Module(**TINY, optimizer=optimizer, polar_method=method, muon_lr=0.02, adamw_lr=3e-3)
    recorder = LossRecorder()
    batches = DataLoader(list(batch.repeat(30, 1, 1)), batch_size=None)  # the same (4, T+1) batch 30 times
    trainer(tmp_path, 30, callbacks=[recorder]).fit(module, batches)
    assert recorder.losses[1] == pytest.approx(math.log(VOCAB), abs=0.3)  # init predicts ~uniform
    assert recorder.losses[30] < recorder.losses[1] - 1.0


def test_method_switch_reaches_the_optimizer(tmp_path: Path) -> None:
    cases = [("muon", "jordan"), ("muon", "you"), ("muon", "polar_express"), ("adamw", "jordan")]
    for optimizer, method in cases:
        module = GPT2Module(**TINY, optimizer=optimizer, polar_method=method, polar_steps=3)
        module.trainer = trainer(tmp_path, 10)
        config = module.configure_optimizers()
        opt = config["optimizer"]
        assert isinstance(opt, MuonAdamW)
        algorithms = {g["name"]: g["algorithm"] for g in opt.param_groups}
        if optimizer == "muon":
            muon = [g for g in opt.param_groups if g["algorithm"] == "muon"]
            assert len(muon) == 1 and muon[0]["method"] == method and muon[0]["steps"] == 3
            # 4 hidden matrices per block (c_attn, attn.c_proj, c_fc, mlp.c_proj)
            assert len(muon[0]["params"]) == 4 * TINY["n_layer"]
        else:
            assert set(algorithms.values()) == {"adamw"}
        assert config["lr_scheduler"]["interval"] == "step"


def test_per_head_groups_qkv(tmp_path: Path) -> None:
    module = GPT2Module(**TINY, per_head=True)
    module.trainer = trainer(tmp_path, 10)
    opt = module.configure_optimizers()["optimizer"]
    heads = [g for g in opt.param_groups if g["name"] == "muon_qkv_heads"]
    assert len(heads) == 1 and len(heads[0]["params"]) == TINY["n_layer"]
    assert tuple(heads[0]["split_sizes"]) == (32, 32, 32) and heads[0]["num_heads"] == 2


def test_schedule_needs_max_steps(tmp_path: Path) -> None:
    module = GPT2Module(**TINY)
    module.trainer = trainer(tmp_path, -1, max_epochs=1)
    with pytest.raises(ValueError, match="max_steps"):
        module.configure_optimizers()


@pytest.mark.parametrize("schedule", ["paper", "cosine"])
def test_lr_follows_schedule_per_step(tmp_path: Path, schedule: str) -> None:
    module = GPT2Module(**TINY, warmup_steps=2, schedule=schedule, muon_lr=0.01, adamw_lr=1e-3)
    seen: list[dict[str, float]] = []

    class LrRecorder(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})

    trainer(tmp_path, 10, callbacks=[LrRecorder()]).fit(module, DataLoader(list(sequences(10))))
    muon = [s["muon"] for s in seen]
    adamw = [s["adamw_no_decay"] for s in seen]
    assert len(muon) == 10
    assert muon[0] == pytest.approx(0.005) and muon[1] == pytest.approx(0.01)  # linear warmup over 2 steps
    for m, a in zip(muon, adamw, strict=True):  # one schedule scales both peaks
        assert a == pytest.approx(m / 10)
    if schedule == "paper":
        # constant through 40% of the 10 steps, then linear decay reaching 0 at step 10
        assert muon[2:5] == pytest.approx([0.01] * 3)
        assert muon[9] == pytest.approx(0.01 / 6)
    else:
        assert muon[9] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert all(b <= a + 1e-12 for a, b in zip(muon[1:], muon[2:], strict=False))


def test_validation_loss_is_token_weighted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = GPT2Module(**TINY)
    val = sequences(10, seed=3)
    # batches of 4, 4 and 2 sequences: an unweighted mean of batch means would differ
    t = trainer(tmp_path, 1, limit_train_batches=1)
    t.validate(module, DataLoader(list(val), batch_size=4), verbose=False)
    with torch.no_grad():
        logits = module.model(val[:, :-1])
        expected = F.cross_entropy(logits.reshape(-1, VOCAB), val[:, 1:].reshape(-1)).item()
        batch_means = [
            F.cross_entropy(module.model(b[:, :-1]).reshape(-1, VOCAB), b[:, 1:].reshape(-1)).item()
            for b in val.split(4)
        ]
    got = t.callback_metrics["val/loss"].item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert abs(sum(batch_means) / 3 - expected) > 1e-4  # the weighting matters for this data
    assert t.callback_metrics["val/ppl"].item() == pytest.approx(math.exp(expected), rel=1e-5)


def test_tokens_seen_throughput_and_mfu_logged(tmp_path: Path) -> None:
    module = GPT2Module(**TINY, peak_flops=1e12)
    t = trainer(tmp_path, 5)
    t.fit(module, DataLoader(list(sequences(20)), batch_size=4))
    metrics = t.callback_metrics
    assert metrics["train/tokens_seen"].item() == 5 * 4 * T
    tps = metrics["train/tokens_per_sec"].item()
    assert tps > 0
    expected_mfu = module.model.flops_per_token(T) * tps / 1e12
    assert metrics["train/mfu"].item() == pytest.approx(expected_mfu, rel=1e-4)


def test_no_mfu_without_known_peak(tmp_path: Path) -> None:
    assert peak_bf16_flops(torch.device("cpu")) is None
    module = GPT2Module(**TINY)
    t = trainer(tmp_path, 3)
    t.fit(module, DataLoader(list(sequences(12)), batch_size=4))
    assert "train/mfu" not in t.callback_metrics


def test_bf16_mixed_on_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = GPT2Module(**TINY, muon_lr=0.02, adamw_lr=3e-3)
    recorder = LossRecorder()
    batch = sequences(4)
    trainer(tmp_path, 20, precision="bf16-mixed", callbacks=[recorder]).fit(
        module, DataLoader(list(batch.repeat(20, 1, 1)), batch_size=None)
    )
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed: fp32 master weights
    assert math.isfinite(recorder.losses[20]) and recorder.losses[20] < recorder.losses[1] - 0.5


def test_compile_keeps_state_dict_keys_and_numerics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = GPT2Module(**TINY)
    compiled = GPT2Module(**TINY, compile=True, compile_backend="eager")
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    idx = sequences(2)[:, :-1]
    torch.testing.assert_close(compiled(idx), eager(idx))


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="polar_steps"):
        GPT2Module(**TINY, polar_steps=0)
    with pytest.raises(ValueError, match="muon_lr"):
        GPT2Module(**TINY, muon_lr=-1.0)
    with pytest.raises(ValueError, match="gpt2-huge"):
        GPT2Module(preset="gpt2-huge")


def _resume_run(root: Path, data: torch.Tensor, max_steps: int, ckpt_path: str | None, every: int):
    L.seed_everything(0)
    module = GPT2Module(**TINY, warmup_steps=2, muon_lr=0.02, adamw_lr=3e-3)
    recorder = LossRecorder()
    checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1, filename="{step}")
    t = trainer(root, max_steps, callbacks=[recorder, checkpoint], enable_checkpointing=True)
    # Map-style, unshuffled: 6 batches per epoch, so the step-6 checkpoint sits on an epoch boundary.
    t.fit(module, DataLoader(list(data), batch_size=4), ckpt_path=ckpt_path)
    return recorder.losses


def test_resume_from_checkpoint_continues_exactly(tmp_path: Path) -> None:
    data = sequences(24)
    full = _resume_run(tmp_path / "full", data, max_steps=12, ckpt_path=None, every=6)
    ckpt = tmp_path / "full" / "step=6.ckpt"
    assert ckpt.exists()
    resumed = _resume_run(tmp_path / "resumed", data, max_steps=12, ckpt_path=str(ckpt), every=6)
    assert sorted(resumed) == list(range(7, 13))
    for step in resumed:
        assert resumed[step] == full[step], step  # bitwise: same model, optimizer, schedule, data


@pytest.mark.gpu
def test_gpu_bf16_compiled_training(tmp_path: Path) -> None:
    """bf16-mixed + torch.compile (inductor) on CUDA: loss falls; MFU is logged where the peak is known."""
    torch.manual_seed(0)
    module = GPT2Module(**TINY, compile=True, muon_lr=0.02, adamw_lr=3e-3)
    recorder = LossRecorder()
    batch = sequences(4)
    t = trainer(tmp_path, 20, accelerator="gpu", precision="bf16-mixed", callbacks=[recorder])
    t.fit(module, DataLoader(list(batch.repeat(20, 1, 1)), batch_size=None))
    assert recorder.losses[20] < recorder.losses[1] - 0.5
    if peak_bf16_flops(torch.device("cuda")) is not None:
        assert 0 < t.callback_metrics["train/mfu"].item() < 1


@pytest.mark.slow
def test_resume_mid_stream_with_the_data_module(tmp_path: Path) -> None:
    """The streamed sample corpus, resumed mid-stream from a step checkpoint: identical later losses."""
    from polar_lightning.data import FineWebDataModule

    def run(root: Path, ckpt_path: str | None) -> dict[int, float]:
        L.seed_everything(0)
        module = GPT2Module(**{**TINY, "vocab_size": 50257}, warmup_steps=2, muon_lr=0.02, adamw_lr=3e-3)
        data = FineWebDataModule(dataset="sample", block_size=T, batch_size=2, val_tokens=4 * (T + 1),
                                 num_workers=0, tokenizer_threads=1)
        recorder = LossRecorder()
        checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=3, save_top_k=-1, filename="{step}")
        t = trainer(root, 8, callbacks=[recorder, checkpoint], enable_checkpointing=True,
                    val_check_interval=4, limit_val_batches=1)
        t.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return recorder.losses

    full = run(tmp_path / "full", None)
    resumed = run(tmp_path / "resumed", str(tmp_path / "full" / "step=3.ckpt"))
    assert sorted(resumed) == list(range(4, 9))
    for step in resumed:
        assert resumed[step] == full[step], step
