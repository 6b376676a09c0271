"""SpectralDiagnostics in real (tiny) Trainer runs: metrics, plots, polar error, loggers."""

from __future__ import annotations

import csv
import glob
import math
import os

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polar_lightning.callbacks import SpectralDiagnostics
from polar_lightning.callbacks.spectral_stats import polar_error_stats
from polar_lightning.polar import orthogonalize

try:
    from polar_lightning.optim import MuonAdamW, muon_param_groups
except ImportError:  # written by another helper; the test below skips until it lands
    MuonAdamW = None
    muon_param_groups = None


class FakeMuon(torch.optim.Optimizer):
    """Muon-shaped stand-in that honours the recording contract (record_polar_updates/polar_updates)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, method: str = "polar_express"):
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.method = method
        self.record_polar_updates = False
        self.polar_updates: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.polar_updates = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("m", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = orthogonalize(buf, self.method) if p.dim() >= 2 else buf
                if self.record_polar_updates and p.dim() >= 2:
                    self.polar_updates[p] = (buf.float()[None].clone(), update.float()[None].clone())
                p.add_(update, alpha=-group["lr"])
        return loss


class Tiny(pl.LightningModule):
    def __init__(self, make_optimizer, width: int = 24) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 4))
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return self.make_optimizer(self)


def _loader(n: int = 64, batch: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=gen)
    y = torch.sin(x[:, :4] * 2.0) + 0.1 * torch.randn(n, 4, generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def _fit(tmp_path, make_optimizer, callback, logger=None, max_steps: int = 6, train_batch: int = 8,
         **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    model = Tiny(make_optimizer)
    logger = logger or CSVLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        log_every_n_steps=1, limit_val_batches=trainer_kwargs.pop("limit_val_batches", 0),
        **trainer_kwargs,
    )
    trainer.fit(model, _loader(batch=train_batch), _loader() if trainer.limit_val_batches else None)
    return trainer, model


def _csv_rows(trainer) -> list[dict[str, str]]:
    with open(os.path.join(trainer.logger.log_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _values(rows, key) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}


def test_csv_run_writes_metrics_and_pngs(tmp_path) -> None:
    cb = SpectralDiagnostics(every_n_steps=3)
    trainer, _ = _fit(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0), cb,
                      max_steps=9)
    rows = _csv_rows(trainer)
    stats = ["update_sv_max", "update_sv_min", "stable_rank", "effective_rank", "update_rms_ratio",
             "grad_stable_rank", "grad_effective_rank", "weight_spectral_norm", "alpha"]
    for layer in ("net.0.weight", "net.2.weight", "net.4.weight"):
        for stat in stats:
            vals = _values(rows, f"spectral/{layer}/{stat}")
            # Sampled: the first update (logged at step 1) and every 3rd (logged at 3, 6, 9).
            assert sorted(vals) == [1, 3, 6, 9], (layer, stat, sorted(vals))
            if stat != "alpha":  # a 24x12 matrix has too few eigenvalues for a tail fit: nan is right
                assert all(math.isfinite(v) for v in vals.values()), (layer, stat)
        sr = _values(rows, f"spectral/{layer}/stable_rank")
        assert all(1.0 <= v <= 12.0 + 1e-4 for v in sr.values())
    assert not any(k.startswith("spectral/") and "bias" in k for k in rows[0])  # 1-D params skipped
    assert not any("polar_err" in k for k in rows[0])  # AdamW records no polar step
    plot_dir = os.path.join(trainer.logger.log_dir, "spectral")
    pngs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(plot_dir, "*.png")))
    assert pngs == ["training.png", "update_spectra.png"]
    assert all(os.path.getsize(os.path.join(trainer.logger.log_dir, "spectral", p)) > 5_000 for p in pngs)


def test_sgd_update_matches_gradient(tmp_path) -> None:
    # Plain SGD applies dW = -lr * grad: the update's scale-free statistics equal the gradient's.
    lr = 0.05
    cb = SpectralDiagnostics(every_n_steps=2, compute_alpha=False, plots=False)
    trainer, _ = _fit(tmp_path, lambda m: torch.optim.SGD(m.parameters(), lr=lr), cb, max_steps=4)
    rows = _csv_rows(trainer)
    for layer in ("net.0.weight", "net.2.weight"):
        upd = _values(rows, f"spectral/{layer}/stable_rank")
        grad = _values(rows, f"spectral/{layer}/grad_stable_rank")
        eff_u = _values(rows, f"spectral/{layer}/effective_rank")
        eff_g = _values(rows, f"spectral/{layer}/grad_effective_rank")
        assert sorted(upd) == [1, 2, 4]
        for step in upd:
            assert upd[step] == pytest.approx(grad[step], rel=2e-3)
            assert eff_u[step] == pytest.approx(eff_g[step], rel=2e-3)
    assert not glob.glob(os.path.join(trainer.logger.log_dir, "spectral", "*.png"))


def test_update_is_what_the_step_applied(tmp_path) -> None:
    # The first AdamW step with zero weight decay moves every entry by lr * sign(grad) (up to eps):
    # rms(dW) = lr exactly, so update_rms_ratio * rms(W_after) recovers lr.
    lr = 1e-3
    cb = SpectralDiagnostics(every_n_steps=100, include=r"net\.2\.", plots=False)
    trainer, model = _fit(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0), cb,
                          max_steps=1)
    rows = _csv_rows(trainer)
    ratio = _values(rows, "spectral/net.2.weight/update_rms_ratio")[1]
    w_rms = float(model.net[2].weight.detach().square().mean().sqrt())
    assert ratio * w_rms == pytest.approx(lr, rel=1e-3)
    assert {k.split("/")[1] for k in rows[0] if k.startswith("spectral/") and k.count("/") == 2} == {
        "net.2.weight"
    }


def test_fake_recording_optimizer_logs_polar_error_and_plot(tmp_path) -> None:
    cb = SpectralDiagnostics(every_n_steps=2)
    trainer, _ = _fit(tmp_path, lambda m: FakeMuon(m.parameters(), lr=0.02), cb, max_steps=4)
    rows = _csv_rows(trainer)
    for layer in ("net.0.weight", "net.2.weight", "net.4.weight"):
        mx = _values(rows, f"spectral/{layer}/polar_err_max")
        md = _values(rows, f"spectral/{layer}/polar_err_median")
        assert sorted(mx) == [1, 2, 4]
        assert all(0.0 <= md[s] <= mx[s] < 1.0 for s in mx)
    assert os.path.exists(os.path.join(trainer.logger.log_dir, "spectral", "polar.png"))
    opt = trainer.optimizers[0]
    assert opt.record_polar_updates is False  # switched off again after the sampled step


def _max_polar_error(tmp_path, make_optimizer) -> float:
    cb = SpectralDiagnostics(every_n_steps=1, compute_alpha=False, plots=False)
    trainer, _ = _fit(tmp_path, make_optimizer, cb, max_steps=10)
    errs = [v for row in cb.history.metrics for k, v in row.items() if k.endswith("/polar_err_max")]
    assert errs, "no polar error was logged"
    return max(errs)


@pytest.mark.slow  # 2 x 10 sampled steps: a few seconds alone, more on a loaded machine
def test_polar_express_beats_jordan_with_the_fake_optimizer(tmp_path) -> None:
    pe = _max_polar_error(tmp_path / "pe", lambda m: FakeMuon(m.parameters(), method="polar_express"))
    jordan = _max_polar_error(tmp_path / "j", lambda m: FakeMuon(m.parameters(), method="jordan"))
    assert pe < jordan


@pytest.mark.slow
@pytest.mark.skipif(MuonAdamW is None, reason="polar_lightning.optim.MuonAdamW has not landed yet")
def test_polar_express_beats_jordan_with_muon_adamw(tmp_path) -> None:
    def make(method: str):
        def build(module: pl.LightningModule):
            groups = muon_param_groups(module, muon_lr=0.02, adamw_lr=3e-4, muon_weight_decay=0.0,
                                       adamw_weight_decay=0.0)
            return MuonAdamW(groups, method=method)

        return build

    pe = _max_polar_error(tmp_path / "pe", make("polar_express"))
    jordan = _max_polar_error(tmp_path / "j", make("jordan"))
    assert pe < jordan


def test_polar_error_seen_by_callback_matches_direct_computation(tmp_path) -> None:
    cb = SpectralDiagnostics(every_n_steps=1, compute_alpha=False, plots=False)
    trainer, model = _fit(tmp_path, lambda m: FakeMuon(m.parameters(), method="jordan"), cb, max_steps=1)
    opt = trainer.optimizers[0]
    inp, out = opt.polar_updates[model.net[2].weight]
    assert cb.history.metrics[0]["spectral/net.2.weight/polar_err_max"] == pytest.approx(
        polar_error_stats(inp, out).max, rel=1e-6
    )


def test_gradient_accumulation_samples_optimizer_steps(tmp_path) -> None:
    cb = SpectralDiagnostics(every_n_steps=2, compute_alpha=False, plots=False)
    trainer, _ = _fit(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), cb, max_steps=4,
                      accumulate_grad_batches=2)
    assert cb.history.steps == [1, 2, 4]
    assert all(v > 0 for row in cb.history.metrics for k, v in row.items() if k.endswith("update_sv_max"))


def test_tensorboard_gets_scalars_histograms_and_images(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = SpectralDiagnostics(every_n_steps=2, plot_every_n_validations=1)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    _fit(tmp_path, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), cb, logger=logger, max_steps=4,
         limit_val_batches=1, val_check_interval=2)
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "spectral/net.2.weight/stable_rank" in tags["scalars"]
    assert "spectral/net.2.weight/update_sv" in tags["histograms"]
    assert {"spectral/training", "spectral/update_spectra"} <= set(tags["images"])
    # Plotted after each of the 2 validations and at fit end.
    assert len(acc.Images("spectral/training")) >= 2
    assert os.path.exists(os.path.join(logger.log_dir, "spectral", "update_spectra.png"))


def test_selection_include_exclude_subsample() -> None:
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
    names = [n for n, _ in SpectralDiagnostics().select_parameters(model)]
    assert names == [f"{i}.weight" for i in range(7)]
    names = [n for n, _ in SpectralDiagnostics(include=r"^[0-3]\.", exclude=r"^2\.").select_parameters(model)]
    assert names == ["0.weight", "1.weight", "3.weight"]
    names = [n for n, _ in SpectralDiagnostics(subsample=3).select_parameters(model)]
    assert names == ["0.weight", "3.weight", "6.weight"]


def test_sampling_schedule_and_validation() -> None:
    cb = SpectralDiagnostics(every_n_steps=5)
    assert [s for s in range(16) if cb.is_sampled(s)] == [0, 4, 9, 14]
    with pytest.raises(ValueError, match="every_n_steps"):
        SpectralDiagnostics(every_n_steps=0)
    with pytest.raises(ValueError, match="include"):
        SpectralDiagnostics(include="(")
    with pytest.raises(ValueError, match="subsample"):
        SpectralDiagnostics(subsample=0)
    with pytest.raises(ValueError, match="polar_threshold"):
        SpectralDiagnostics(polar_threshold=1.5)


def test_top_level_export() -> None:
    import polar_lightning

    assert polar_lightning.SpectralDiagnostics is SpectralDiagnostics


_DIST_SCRIPT = r'''
import json, os, sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polar_lightning.callbacks import SpectralDiagnostics

kind, out = sys.argv[1], sys.argv[2]


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4))

    def configure_model(self):
        if kind == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class EveryOther(torch.utils.data.Sampler):
    """Rank r reads samples r, r + 2, ... in order (Lightning's own sampler would shuffle)."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(torch.distributed.get_rank(), self.n, 2))

    def __len__(self):
        return self.n // 2


pl.seed_everything(0, verbose=False)
model = Net()
gen = torch.Generator().manual_seed(0)
x = torch.randn(64, 12, generator=gen)
y = torch.sin(x[:, :4] * 2.0) + 0.1 * torch.randn(64, 4, generator=gen)
if kind == "fsdp2":
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
else:
    strategy = "ddp"
cb = SpectralDiagnostics(every_n_steps=2, plots=False)
trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=2, strategy=strategy, callbacks=[cb],
                     logger=CSVLogger(out, name="run"), enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                     use_distributed_sampler=False)
trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, sampler=EveryOther(64)))
with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump({"steps": cb.history.steps, "metrics": cb.history.metrics}, f)
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_ranks_only_rank0_logs_and_matches_one_process(tmp_path, kind: str) -> None:
    import json
    import subprocess
    import sys

    script = tmp_path / "run_dist.py"
    script.write_text(_DIST_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _attempt in range(2):
        proc = subprocess.run([sys.executable, str(script), kind, str(tmp_path)], capture_output=True,
                              text=True, timeout=40, env=env)
        # Lightning picks the rendezvous port before the ranks bind it; another process can take it
        # in between. That, and only that, is worth a second try.
        if proc.returncode == 0 or "Address already in use" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["steps"] == [1, 2, 4] and rank1["steps"] == []  # only rank 0 computes
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "run" / "*" / "metrics.csv"))[0])))
    assert sorted(_values(rows, "spectral/net.2.weight/stable_rank")) == [1, 2, 4]

    # One process on the union of both ranks' batches (rank r reads samples r, r + 2, ...; with
    # plain SGD, equal batch halves average to the same gradient) must see the same statistics.
    cb = SpectralDiagnostics(every_n_steps=2, plots=False)
    _fit(tmp_path / "ref", lambda m: torch.optim.SGD(m.parameters(), lr=0.05), cb, max_steps=4,
         train_batch=16)
    assert cb.history.steps == rank0["steps"]
    for ref, got in zip(cb.history.metrics, rank0["metrics"], strict=True):
        for key in ("net.2.weight/stable_rank", "net.0.weight/update_rms_ratio",
                    "net.4.weight/weight_spectral_norm", "net.2.weight/grad_effective_rank"):
            key = "spectral/" + key
            assert got[key] == pytest.approx(ref[key], rel=1e-3), key
