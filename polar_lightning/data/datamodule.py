"""``FineWebDataModule``: GPT-2 token batches from a streamed corpus or from pre-tokenized shards.

Batches are LongTensor (batch_size, block_size + 1); a model uses ``x = b[:, :-1], y = b[:, 1:]``.

Resume: the module's state is the number of training batches each rank has consumed. Every rank
consumes the same number under DDP, so rank 0's copy (the only one Lightning writes) lets every rank
recompute its own readers' positions from its rank, its worker ids and the saved layout.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from polar_lightning.data.documents import DEFAULT_DATASET, DEFAULT_NAME, Corpus, CorpusSpec
from polar_lightning.data.shards import ShardSet, ShardStream, list_shards
from polar_lightning.data.streaming import (
    ReaderLayout,
    TrainStream,
    ValidationBatches,
    collect_validation_tokens,
    validate_shape,
    validation_rows,
)
from polar_lightning.data.tokenizer import VOCAB_SIZE

STATE_FORMAT = 1
# Settings that change which tokens a rank's batches hold; a resume under other values is not exact.
_LAYOUT_KEYS = ("source", "block_size", "batch_size", "num_workers", "world_size", "seed", "shuffle",
                "shard_order", "val_tokens")


class _TrainLoader(DataLoader):
    """A DataLoader that starts its dataset at the data module's position on every new iterator."""

    datamodule: FineWebDataModule

    def __iter__(self):  # type: ignore[override]
        self.dataset.start_batches = self.datamodule._start_iterator()
        for batch in super().__iter__():
            self.datamodule._yielded += 1
            yield batch


class FineWebDataModule(pl.LightningDataModule):
    """GPT-2 tokens of FineWeb (or any text dataset) for language-model training.

    Args:
        dataset: hub dataset id; ``"sample"`` for the corpus shipped with polar_lightning (offline,
            3.5M tokens); or a local parquet/jsonl/txt file, directory or glob.
        name: hub config of the dataset (FineWeb: ``"sample-10BT"``); ignored for local files.
        data_files: local parquet, jsonl or txt files or globs; when given they replace ``dataset``.
        split: split of a hub dataset.
        text_column: column holding the document text.
        source: ``"stream"`` reads and tokenizes on the fly; ``"shards"`` reads the llm.c shards that
            ``polar-lightning prepare`` wrote to ``shards_dir``.
        shards_dir: directory of ``*_train_*.bin`` / ``*_val_*.bin`` shards (``source="shards"``).
        shard_order: ``"random"`` (seeded, new every pass) or ``"sequential"`` row order for shards.
        block_size: tokens the model sees per row; rows hold ``block_size + 1`` tokens.
        batch_size: rows per training batch on each rank.
        val_batch_size: rows per validation batch (default: ``batch_size``).
        val_tokens: size of the fixed validation set, taken from held-out documents at the start of the
            corpus (streaming) or from the validation shards; split across ranks.
        num_workers: DataLoader worker processes per rank for training (0: read in the main process).
        tokenizer_threads: tiktoken threads per reader (default: CPUs / (workers x local ranks)).
        shuffle: streaming only: shuffle each reader's unit order on every pass.
        seed: seed of every shuffle.
    """

    vocab_size: int = VOCAB_SIZE

    def __init__(
        self,
        dataset: str = DEFAULT_DATASET,
        name: str | None = DEFAULT_NAME,
        data_files: list[str] | None = None,
        split: str = "train",
        text_column: str = "text",
        source: Literal["stream", "shards"] = "stream",
        shards_dir: str | None = None,
        shard_order: Literal["random", "sequential"] = "random",
        block_size: int = 1024,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        val_tokens: int = 2**20,
        num_workers: int = 1,
        tokenizer_threads: int | None = None,
        shuffle: bool = True,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        validate_shape(block_size, batch_size)
        if val_batch_size is not None:
            validate_shape(block_size, val_batch_size)
        if source not in ("stream", "shards"):
            raise ValueError(f"source must be 'stream' or 'shards', got {source!r}")
        if source == "shards" and not shards_dir:
            raise ValueError("source='shards' needs shards_dir (write shards with `polar-lightning prepare`)")
        if shard_order not in ("random", "sequential"):
            raise ValueError(f"shard_order must be 'random' or 'sequential', got {shard_order!r}")
        if val_tokens < block_size + 1:
            raise ValueError(
                f"val_tokens={val_tokens} is shorter than one block of block_size + 1 = "
                f"{block_size + 1} tokens"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if tokenizer_threads is not None and tokenizer_threads < 1:
            raise ValueError(f"tokenizer_threads must be >= 1 or None, got {tokenizer_threads}")
        self.save_hyperparameters()
        files = tuple(data_files) if data_files else None
        self.spec = CorpusSpec(dataset=dataset, name=name, data_files=files, split=split,
                               text_column=text_column)
        self.source = source
        self.shards_dir = shards_dir
        self.shard_order = shard_order
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.val_tokens = val_tokens
        self.num_workers = num_workers
        self.tokenizer_threads = tokenizer_threads
        self.shuffle = shuffle
        self.seed = seed
        self.vocab_size = VOCAB_SIZE
        self.rank, self.world_size = 0, 1
        self._ready = False
        self._corpus: Corpus | None = None
        self._train_shards: ShardSet | None = None
        self._holdout = (0, 0)
        self._val_tokens: Any = None
        # position bookkeeping (see consumed_train_batches)
        self._base = 0
        self._yielded = 0
        self._trainer_mark: int | None = None
        self._iterating = False

    # ------------------------------------------------------------------ setup
    def setup(
        self, stage: str | None = None, *, rank: int | None = None, world_size: int | None = None
    ) -> None:
        """Open the data and build the validation set (idempotent).

        Args:
            stage: Lightning's stage (unused: every stage needs the same data).
            rank: this rank (default: from the trainer, else torch.distributed, else 0).
            world_size: number of ranks (default: from the trainer, else torch.distributed, else 1).
        """
        trainer = self.trainer
        if rank is None or world_size is None:
            if trainer is not None:
                rank, world_size = trainer.global_rank, trainer.world_size
            elif torch.distributed.is_available() and torch.distributed.is_initialized():
                rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
            else:
                rank, world_size = 0, 1
        ReaderLayout(rank, world_size, self.num_workers)
        if self._ready and (rank, world_size) == (self.rank, self.world_size):
            return
        self.rank, self.world_size = rank, world_size
        n_val = validation_rows(self.val_tokens, self.block_size) * self.block_size + 1
        if self.source == "stream":
            self._corpus = Corpus(self.spec)
            tokens, self._holdout = collect_validation_tokens(self._corpus, n_val, self._threads())
            if len(tokens) < n_val:
                raise ValueError(
                    f"{self.spec.describe()} has only {len(tokens)} tokens, not more than the "
                    f"{n_val} validation tokens: nothing is left for training; lower val_tokens"
                )
        else:
            self._train_shards = ShardSet(self._shard_paths("train"), self.block_size)
            val = ShardSet(self._shard_paths("val"), self.block_size)
            tokens = val.concatenated(max_tokens=n_val)
            if len(tokens) < self.block_size + 1:
                raise ValueError(
                    f"validation shards in {self.shards_dir} hold {len(tokens)} tokens, shorter than one "
                    f"block of {self.block_size + 1}"
                )
        self._val_tokens = tokens
        self._ready = True

    def _shard_paths(self, split: str) -> list:
        paths = list_shards(self.shards_dir, split)
        if not paths:
            raise FileNotFoundError(
                f"no *_{split}_*.bin shards in {self.shards_dir}; write them with `polar-lightning prepare`"
            )
        return paths

    def _threads(self) -> int:
        if self.tokenizer_threads is not None:
            return self.tokenizer_threads
        local_ranks = getattr(self.trainer, "num_devices", 1) if self.trainer is not None else 1
        return max(1, len(os.sched_getaffinity(0)) // (max(1, self.num_workers) * max(1, local_ranks)))

    @property
    def layout(self) -> ReaderLayout:
        """This rank's readers."""
        return ReaderLayout(self.rank, self.world_size, self.num_workers)

    # ------------------------------------------------------------ dataloaders
    def train_dataset(self, start_batches: int = 0) -> TrainStream | ShardStream:
        """The rank's endless training batches, starting after ``start_batches`` batches."""
        if not self._ready:
            self.setup()
        if self.source == "stream":
            assert self._corpus is not None
            return TrainStream(
                self._corpus, block_size=self.block_size, batch_size=self.batch_size, layout=self.layout,
                holdout=self._holdout, seed=self.seed, shuffle=self.shuffle,
                tokenizer_threads=self._threads(), start_batches=start_batches,
            )
        assert self._train_shards is not None
        return ShardStream(self._train_shards, batch_size=self.batch_size, layout=self.layout,
                           order=self.shard_order, seed=self.seed, start_batches=start_batches)

    def train_dataloader(self) -> DataLoader:
        """Endless training batches (B, block_size + 1); stop training with ``max_steps``."""
        loader = _TrainLoader(self.train_dataset(), batch_size=None, num_workers=self.num_workers,
                              pin_memory=torch.cuda.is_available())
        loader.datamodule = self
        return loader

    def val_dataloader(self) -> DataLoader:
        """This rank's share of the fixed validation set, in the same number of batches on every rank."""
        if not self._ready:
            self.setup()
        data = ValidationBatches(self._val_tokens, block_size=self.block_size, batch_size=self.val_batch_size,
                                 rank=self.rank, world_size=self.world_size)
        return DataLoader(data, batch_size=None, num_workers=0, pin_memory=torch.cuda.is_available())

    # ------------------------------------------------------------------ state
    def _trainer_batches(self) -> int | None:
        fit_loop = getattr(self.trainer, "fit_loop", None) if self.trainer is not None else None
        if fit_loop is None:
            return None
        return int(fit_loop.epoch_loop.batch_progress.total.processed)

    def _start_iterator(self) -> int:
        self._base = self.consumed_train_batches()
        self._yielded = 0
        self._trainer_mark = self._trainer_batches()
        self._iterating = True
        return self._base

    def consumed_train_batches(self) -> int:
        """Training batches this rank has consumed (equal on every rank).

        Under a Trainer this counts the batches it has processed (its fetcher reads one batch ahead,
        which must not count); without one, the batches the loader has returned.
        """
        if not self._iterating:
            return self._base
        now = self._trainer_batches()
        if now is not None and self._trainer_mark is not None:
            return self._base + now - self._trainer_mark
        return self._base + self._yielded

    def _layout_state(self) -> dict[str, Any]:
        return {"source": self.source, "block_size": self.block_size, "batch_size": self.batch_size,
                "num_workers": self.num_workers, "world_size": self.world_size, "seed": self.seed,
                "shuffle": self.shuffle, "shard_order": self.shard_order, "val_tokens": self.val_tokens}

    def state_dict(self) -> dict[str, Any]:
        """The data position: batches consumed per rank, and the layout it refers to."""
        position = self.consumed_train_batches()
        return {"format": STATE_FORMAT, "train_batches": position, **self._layout_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position; every rank recomputes its readers' positions from it."""
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown FineWebDataModule state format {state_dict.get('format')!r}")
        if self.trainer is not None:
            self.world_size = self.trainer.world_size
        current = self._layout_state()
        changed = [k for k in _LAYOUT_KEYS if k in state_dict and state_dict[k] != current[k]]
        if changed:
            warnings.warn(
                "data layout changed since the checkpoint ("
                + ", ".join(f"{k}: {state_dict[k]!r} -> {current[k]!r}" for k in changed)
                + "): training continues after the same number of batches, but not with the exact "
                "tokens an uninterrupted run would have seen",
                stacklevel=2,
            )
        self._base = int(state_dict["train_batches"])
        self._yielded = 0
        self._trainer_mark = None
        self._iterating = False



