"""Pre-tokenized uint16 shards in llm.c's format, and a memory-mapped reader for them.

File layout (llm.c ``dev/data/data_common.py`` and modded-nanogpt): a header of 256 int32
``[20240520, 1, n_tokens, 0, ...]`` (1024 bytes), then ``n_tokens`` uint16 tokens, each document
prefixed by EOT 50256. A shard of ``n`` tokens holds ``(n - 1) // T`` rows of ``T + 1`` tokens with
stride ``T`` (as in :mod:`polar_lightning.data.streaming`); the tail shorter than a row is not read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from polar_lightning.data.streaming import SINGLE_READER, ReaderLayout, current_worker, validate_shape

SHARD_MAGIC = 20240520  # llm.c's magic number for token shards
SHARD_VERSION = 1  # llm.c: version 1 = uint16 GPT-2 tokens
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.uint16
MAX_SHARD_TOKENS = 2**31 - 1  # n_tokens is an int32 in the header

ORDERS = ("sequential", "random")


class ShardError(ValueError):
    """A shard file that is truncated, corrupt or not in llm.c's format (the message names the file)."""


def write_shard(path: str | os.PathLike[str], tokens: np.ndarray) -> Path:
    """Write ``tokens`` as an llm.c shard, atomically (temporary file, fsync, rename).

    A crash leaves either the previous file or the complete new one, never a partial shard.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if len(tokens) > MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds at most {MAX_SHARD_TOKENS} tokens, got {len(tokens)}")
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) > np.iinfo(TOKEN_DTYPE).max):
        raise ValueError(f"token ids must fit in uint16, got range [{tokens.min()}, {tokens.max()}]")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike[str]) -> int:
    """Validate a shard's header and size; return its number of tokens.

    Raises:
        FileNotFoundError: the file does not exist (named).
        ShardError: the file is truncated, has trailing bytes or a foreign header (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard file not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(
            f"shard {path} is truncated: {size} bytes, shorter than its {HEADER_BYTES}-byte header"
        )
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise ShardError(
            f"shard {path} is corrupt or not an llm.c token shard: header starts {header[:2].tolist()}, "
            f"expected [{SHARD_MAGIC}, {SHARD_VERSION}]"
        )
    n_tokens = int(header[2])
    expected = HEADER_BYTES + n_tokens * np.dtype(TOKEN_DTYPE).itemsize
    if n_tokens < 0 or size < expected:
        raise ShardError(
            f"shard {path} is truncated: header says {n_tokens} tokens ({expected} bytes), file has {size}"
        )
    if size > expected:
        raise ShardError(f"shard {path} is corrupt: header says {expected} bytes, file has {size}")
    return n_tokens


def open_shard(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a validated shard's tokens: uint16 array (n_tokens,)."""
    n_tokens = read_header(path)
    if n_tokens == 0:
        return np.empty(0, dtype=TOKEN_DTYPE)
    mapped = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    # A plain ndarray view of the same pages: slicing a np.memmap builds a memmap object each time,
    # which dominated per-row reads.
    return mapped.view(np.ndarray)


def list_shards(directory: str | os.PathLike[str], split: str) -> list[Path]:
    """Shards of ``split`` ("train" or "val") in ``directory``, named ``*_{split}_NNNNNN.bin``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"shard directory not found: {directory}")
    return sorted(directory.glob(f"*_{split}_*.bin"))


class ShardSet:
    """A fixed list of shards, validated on construction and memory-mapped lazily in each process.

    Args:
        paths: shard files.
        block_size: tokens per row the model sees (rows hold ``block_size + 1``).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], block_size: int) -> None:
        if not paths:
            raise FileNotFoundError("no shard files given")
        validate_shape(block_size, 1)
        self.paths = [Path(p) for p in paths]
        self.lengths = np.array([read_header(p) for p in self.paths], dtype=np.int64)  # (S,)
        self.block_size = block_size
        self.rows = np.maximum(0, (self.lengths - 1) // block_size)  # (S,)
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        # memmaps would pickle as full copies; each worker maps the files itself
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def tokens(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = open_shard(self.paths[shard])
        return self._maps[shard]

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    def concatenated(self, max_tokens: int | None = None) -> np.ndarray:
        """The shards' tokens end to end (at most ``max_tokens``), as int32 (n,)."""
        parts, have = [], 0
        for s in range(len(self.paths)):
            take = self.tokens(s)[: None if max_tokens is None else max_tokens - have]
            parts.append(np.asarray(take, dtype=np.int32))
            have += len(take)
            if max_tokens is not None and have >= max_tokens:
                break
        return np.concatenate(parts)


class ShardStream(IterableDataset):
    """Endless training batches of one rank from memory-mapped shards.

    Each pass orders all rows (``sequential``: shards in order, rows in order; ``random``: a seeded
    permutation of shards, then of rows inside each shard, new every pass); reader ``r`` of ``R`` takes
    the rows at positions ``r, r + R, ...`` of that order, so readers are disjoint and cover every row.
    A reader's position is its count of rows, so resuming is arithmetic, not re-reading.

    Args:
        shards: the training shards.
        batch_size: rows per batch.
        layout: rank, world size and DataLoader workers.
        order: "sequential" or "random".
        seed: seeds the random order.
        start_batches: batches this rank already consumed (resume).
    """

    def __init__(
        self,
        shards: ShardSet,
        *,
        batch_size: int,
        layout: ReaderLayout = SINGLE_READER,
        order: str = "random",
        seed: int = 0,
        start_batches: int = 0,
    ) -> None:
        super().__init__()
        validate_shape(shards.block_size, batch_size)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if start_batches < 0:
            raise ValueError(f"start_batches must be >= 0, got {start_batches}")
        if shards.total_rows < layout.num_readers:
            raise ValueError(
                f"shards hold {shards.total_rows} rows of {shards.block_size + 1} tokens, fewer than the "
                f"{layout.num_readers} readers (ranks x workers)"
            )
        self.shards = shards
        self.batch_size = batch_size
        self.layout = layout
        self.order = order
        self.seed = seed
        self.start_batches = start_batches

    def _shard_order(self, epoch: int) -> list[int]:
        n = len(self.shards.paths)
        if self.order == "sequential":
            return list(range(n))
        return [int(s) for s in np.random.default_rng([self.seed, epoch]).permutation(n)]

    def _row_order(self, epoch: int, shard: int) -> np.ndarray:
        rows = int(self.shards.rows[shard])
        if self.order == "sequential":
            return np.arange(rows)
        return np.random.default_rng([self.seed, epoch, shard]).permutation(rows)

    def rows_per_pass(self, reader: int) -> int:
        """Rows reader ``reader`` reads in one pass."""
        return len(range(reader, self.shards.total_rows, self.layout.num_readers))

    def rows(self, worker: int, start_row: int = 0) -> Iterator[tuple[int, int]]:
        """The reader's endless sequence of ``(shard, row)``, from its ``start_row``-th row on."""
        reader, num_readers = self.layout.reader(worker), self.layout.num_readers
        per_pass = self.rows_per_pass(reader)
        epoch, skip = divmod(start_row, per_pass)
        while True:
            offset = 0  # position of the current shard's first row in this pass' order
            for shard in self._shard_order(epoch):
                n = int(self.shards.rows[shard])
                first = (reader - offset) % num_readers
                mine = len(range(first, n, num_readers))
                if skip >= mine:
                    skip -= mine
                else:
                    order = self._row_order(epoch, shard)
                    for i in range(first + skip * num_readers, n, num_readers):
                        yield shard, int(order[i])
                    skip = 0
                offset += n
            epoch += 1

    def batches(self, worker: int, start_batches: int = 0) -> Iterator[torch.Tensor]:
        """The reader's batches (B, T+1) int64, skipping its first ``start_batches``."""
        T, B = self.shards.block_size, self.batch_size
        out = np.empty((B, T + 1), dtype=np.int64)
        i = 0
        for shard, row in self.rows(worker, start_batches * B):
            out[i] = self.shards.tokens(shard)[row * T : row * T + T + 1]
            i += 1
            if i == B:
                yield torch.from_numpy(out)
                out = np.empty((B, T + 1), dtype=np.int64)
                i = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, done = self.layout.resume(current_worker(self.layout), self.start_batches)
        yield from self.batches(worker, done)
