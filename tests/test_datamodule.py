"""FineWebDataModule: batches, validation split, exact resume for every rank, shards, bad input."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from polar_lightning.data import FineWebDataModule
from polar_lightning.data.documents import CorpusSpec, DataSourceError
from polar_lightning.data.prepare import prepare_shards
from polar_lightning.data.tokenizer import EOT_TOKEN, VOCAB_SIZE


def sample_dm(**overrides) -> FineWebDataModule:
    kwargs = dict(dataset="sample", block_size=16, batch_size=2, val_tokens=400, num_workers=2, seed=11)
    kwargs.update(overrides)
    return FineWebDataModule(**kwargs)


def take(loader, n: int) -> list[torch.Tensor]:
    return [b for _, b in zip(range(n), loader, strict=False)]


def test_signature_is_typed_and_documented_for_the_cli() -> None:
    assert FineWebDataModule.vocab_size == VOCAB_SIZE == 50257
    sig = inspect.signature(FineWebDataModule.__init__)
    doc = FineWebDataModule.__doc__ or ""
    for name, param in list(sig.parameters.items())[1:]:
        assert param.annotation is not inspect.Parameter.empty, name
        assert f"{name}:" in doc, name
    assert sig.parameters["dataset"].default == "HuggingFaceFW/fineweb"
    assert sig.parameters["name"].default == "sample-10BT"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 0}, "block_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"source": "disk"}, "source"),
        ({"source": "shards"}, "shards_dir"),
        ({"shard_order": "shuffled"}, "shard_order"),
        ({"val_tokens": 16}, "val_tokens"),
        ({"num_workers": -1}, "num_workers"),
        ({"tokenizer_threads": 0}, "tokenizer_threads"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_dm(**kwargs)


def test_sample_batches_and_validation() -> None:
    dm = sample_dm()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.int64 and batch.shape == (2, 17)
    assert 0 <= int(batch.min()) and int(batch.max()) < VOCAB_SIZE
    val = list(dm.val_dataloader())
    rows = torch.cat(val)
    assert rows.shape == ((400 - 1) // 16, 17) and int(rows[0, 0]) == EOT_TOKEN
    # two ranks: the same rows in total, the same number of batches each
    parts = []
    for rank in range(2):
        other = sample_dm()
        other.setup("fit", rank=rank, world_size=2)
        parts.append(list(other.val_dataloader()))
    assert len(parts[0]) == len(parts[1])
    assert torch.equal(torch.cat(parts[0] + parts[1]), rows)


def test_resume_from_rank_zero_state_is_exact_on_every_rank() -> None:
    world = 2
    full, resumed = {}, {}
    state = None
    for rank in range(world):
        dm = sample_dm()
        dm.setup("fit", rank=rank, world_size=world)
        full[rank] = take(dm.train_dataloader(), 9)
        part = sample_dm()
        part.setup("fit", rank=rank, world_size=world)
        take(part.train_dataloader(), 5)
        if rank == 0:
            state = part.state_dict()  # Lightning writes rank 0's copy only
    assert state is not None and state["train_batches"] == 5
    for rank in range(world):
        dm = sample_dm()
        dm.setup("fit", rank=rank, world_size=world)
        dm.load_state_dict(state)
        resumed[rank] = take(dm.train_dataloader(), 4)
        assert all(torch.equal(a, b) for a, b in zip(full[rank][5:], resumed[rank], strict=True))
    assert not torch.equal(full[0][0], full[1][0])  # ranks read different documents


class _Recorder(pl.LightningModule):
    """Records the batches it trains on; learns nothing (lr 0) so runs are cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB_SIZE, 2)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.clone())
        return self.emb(batch[:, :-1]).sum() * 0.0

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_tokens", float(batch.numel()), reduce_fx="sum")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("source", ["stream", "shards"])
def test_trainer_checkpoint_resume_sees_the_uninterrupted_tokens(tmp_path: Path, source: str) -> None:
    extra = {}
    if source == "shards":
        prepare_shards(CorpusSpec(dataset="sample"), tmp_path / "shards", shard_tokens=20_000, val_tokens=400,
                       max_tokens=60_000, progress=False)
        extra = {"source": "shards", "shards_dir": str(tmp_path / "shards")}
    common = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  val_check_interval=4, limit_val_batches=2, num_sanity_val_steps=0)
    full = _Recorder()
    pl.Trainer(max_steps=8, enable_checkpointing=False, **common).fit(full, datamodule=sample_dm(**extra))
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    first = _Recorder()
    pl.Trainer(max_steps=5, callbacks=[ckpt], **common).fit(first, datamodule=sample_dm(**extra))
    path = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    assert torch.load(path, weights_only=False)["FineWebDataModule"]["train_batches"] == 3
    second = _Recorder()
    pl.Trainer(max_steps=8, enable_checkpointing=False, **common).fit(
        second, datamodule=sample_dm(**extra), ckpt_path=path
    )
    assert len(second.seen) == 5
    assert all(torch.equal(a, b) for a, b in zip(full.seen[3:], second.seen, strict=True))


def test_layout_change_on_resume_warns() -> None:
    dm = sample_dm()
    state = dm.state_dict()
    state["batch_size"] = 4
    with pytest.warns(UserWarning, match="batch_size"):
        sample_dm().load_state_dict(state)


def test_hub_dataset_offline_error_is_fast_and_helpful(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dm = FineWebDataModule()
    start = time.perf_counter()
    with pytest.raises(DataSourceError) as err:
        dm.setup("fit")
    assert time.perf_counter() - start < 2.0
    assert "HuggingFaceFW/fineweb" in str(err.value) and "data_files" in str(err.value)


def test_corpus_too_small_for_validation(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("just a few words")
    dm = FineWebDataModule(data_files=[str(tmp_path / "one.txt")], block_size=16, val_tokens=64,
                           num_workers=0)
    with pytest.raises(ValueError, match="val_tokens"):
        dm.setup("fit")


def test_missing_shards_dir_and_short_validation_shards(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FineWebDataModule(source="shards", shards_dir=str(tmp_path / "nowhere"), block_size=16,
                          val_tokens=64).setup("fit")
    prepare_shards(CorpusSpec(dataset="sample"), tmp_path / "s", shard_tokens=5000, val_tokens=10,
                   max_tokens=5000, progress=False)
    with pytest.raises(ValueError, match="shorter than one block"):
        FineWebDataModule(source="shards", shards_dir=str(tmp_path / "s"), block_size=4096,
                          val_tokens=8192).setup("fit")
