"""Read, tokenize and pack documents into rows of ``block_size + 1`` tokens, on the fly.

Every document is prefixed by EOT 50256 (llm.c's layout) and the token stream is cut into rows with
stride ``block_size``: row ``i`` is ``stream[i*T : i*T + T + 1]``, so with ``x = row[:-1], y = row[1:]``
every token is a target exactly once and nothing is padded. A batch of ``B`` rows consumes ``B*T``
tokens of its reader's stream, which makes a reader's position a function of the batches it produced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from polar_lightning.data.documents import Corpus, Position, UnitSlice, reader_slices
from polar_lightning.data.tokenizer import EOT_TOKEN, documents_to_tokens, encode_documents


def validate_shape(block_size: int, batch_size: int) -> None:
    """Raise ValueError unless both are positive integers."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


@dataclass(frozen=True)
class ReaderLayout:
    """Who reads: rank ``rank`` of ``world_size``, each with ``num_workers`` DataLoader workers (0: main)."""

    rank: int = 0
    world_size: int = 1
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @property
    def workers_per_rank(self) -> int:
        return max(1, self.num_workers)

    @property
    def num_readers(self) -> int:
        return self.world_size * self.workers_per_rank

    def reader(self, worker: int) -> int:
        if not 0 <= worker < self.workers_per_rank:
            raise ValueError(f"worker must be in [0, {self.workers_per_rank}), got {worker}")
        return self.rank * self.workers_per_rank + worker

    def worker_batches(self, rank_batches: int, worker: int) -> int:
        """Batches reader ``worker`` produced of the first ``rank_batches`` of its rank."""
        w = self.workers_per_rank
        return rank_batches // w + (1 if worker < rank_batches % w else 0)

    def resume(self, loader_worker: int, rank_batches: int) -> tuple[int, int]:
        """Which reader a DataLoader worker plays after ``rank_batches`` batches, and that reader's count.

        A DataLoader returns batches round-robin over its workers, starting at worker 0 on every new
        iterator, as long as none runs dry (training streams never do). Batch ``n`` of an uninterrupted
        run comes from reader ``n % W``, so a resumed iterator's worker ``i`` plays reader
        ``(i + rank_batches) % W``.
        """
        worker = (loader_worker + rank_batches) % self.workers_per_rank
        return worker, self.worker_batches(rank_batches, worker)


SINGLE_READER = ReaderLayout()


def current_worker(layout: ReaderLayout) -> int:
    """The DataLoader worker running this code (0 in the main process), checked against ``layout``."""
    info = get_worker_info()
    if info is None:
        if layout.num_workers > 0:
            raise RuntimeError(
                f"this dataset was laid out for {layout.num_workers} DataLoader workers but is iterated "
                "in the main process; use a DataLoader with the same num_workers"
            )
        return 0
    if info.num_workers != layout.workers_per_rank:
        raise RuntimeError(
            f"this dataset was laid out for {layout.num_workers} DataLoader workers, "
            f"but the DataLoader has {info.num_workers}"
        )
    return info.id


def pack_batches(
    chunks: Iterable[np.ndarray], block_size: int, batch_size: int, skip_tokens: int = 0
) -> Iterator[torch.Tensor]:
    """Pack a token stream into LongTensor batches (batch_size, block_size + 1), stride block_size.

    Args:
        chunks: consecutive pieces of the token stream.
        skip_tokens: tokens of the stream to drop first (a multiple of ``batch_size * block_size``
            resumes after that many batches).
    """
    step = batch_size * block_size
    pending = np.empty(0, dtype=np.int32)
    for chunk in chunks:
        if skip_tokens:
            dropped = min(skip_tokens, len(chunk))
            chunk = chunk[dropped:]
            skip_tokens -= dropped
            if not len(chunk):
                continue
        pending = np.concatenate([pending, chunk]) if len(pending) else chunk
        start = 0
        while len(pending) - start >= step + 1:
            window = torch.from_numpy(pending[start : start + step + 1].astype(np.int64))  # (B*T+1,)
            yield window.unfold(0, block_size + 1, block_size).contiguous()  # (B, T+1)
            start += step
        pending = pending[start:]


class TrainStream(IterableDataset):
    """Endless training batches of one rank, read from disjoint documents by each DataLoader worker.

    Args:
        corpus: the documents.
        block_size: tokens per row the model sees (rows hold ``block_size + 1``).
        batch_size: rows per batch.
        layout: rank, world size and DataLoader workers (the document split depends on all three).
        holdout: global position before which documents are held out (the validation documents).
        seed: seeds the per-pass order of each reader's units.
        shuffle: shuffle unit order per pass; False reads in corpus order.
        tokenizer_threads: threads of tiktoken's batch encoder in each reader.
        start_batches: batches this rank already consumed (resume): readers skip exactly those.
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        block_size: int,
        batch_size: int,
        layout: ReaderLayout = SINGLE_READER,
        holdout: Position = (0, 0),
        seed: int = 0,
        shuffle: bool = True,
        tokenizer_threads: int = 1,
        start_batches: int = 0,
    ) -> None:
        super().__init__()
        validate_shape(block_size, batch_size)
        if start_batches < 0:
            raise ValueError(f"start_batches must be >= 0, got {start_batches}")
        self.corpus = corpus
        self.block_size = block_size
        self.batch_size = batch_size
        self.layout = layout
        self.holdout = holdout
        self.seed = seed
        self.shuffle = shuffle
        self.tokenizer_threads = tokenizer_threads
        self.start_batches = start_batches

    def slices(self, worker: int, epoch: int) -> list[UnitSlice]:
        """The units a reader reads in pass ``epoch``, in reading order."""
        reader = self.layout.reader(worker)
        slices = reader_slices(self.corpus.num_units, self.layout.num_readers, reader)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, reader]).permutation(len(slices))
            slices = [slices[i] for i in order]
        return slices

    def documents(self, worker: int, epoch: int = 0) -> Iterator[tuple[list[Position], list[str]]]:
        """One pass of a reader over its documents: batches of (positions, texts)."""
        return self.corpus.documents(self.slices(worker, epoch), start=self.holdout)

    def token_chunks(self, worker: int) -> Iterator[np.ndarray]:
        """The reader's endless token stream, pass after pass, in chunks."""
        for epoch in itertools.count():
            empty = True
            for _, texts in self.documents(worker, epoch):
                empty = False
                yield documents_to_tokens(texts, num_threads=self.tokenizer_threads)
            if empty:
                raise ValueError(
                    f"reader {self.layout.reader(worker)} of {self.layout.num_readers} (rank "
                    f"{self.layout.rank}, worker {worker}) has no training documents in "
                    f"{self.corpus.spec.describe()}: the corpus is too small for this many readers "
                    "or the validation set holds out everything"
                )

    def batches(self, worker: int, start_batches: int = 0) -> Iterator[torch.Tensor]:
        """The reader's batches, skipping its first ``start_batches`` (each is B*T tokens)."""
        skip = start_batches * self.batch_size * self.block_size
        return pack_batches(self.token_chunks(worker), self.block_size, self.batch_size, skip_tokens=skip)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker, done = self.layout.resume(current_worker(self.layout), self.start_batches)
        yield from self.batches(worker, done)


def collect_validation_tokens(
    corpus: Corpus, n_tokens: int, tokenizer_threads: int = 1
) -> tuple[np.ndarray, Position]:
    """The first ``n_tokens`` tokens of the corpus in global order, and the position held out after them.

    Returns fewer tokens if the corpus is shorter. Documents that contributed (even partly) are held
    out: the returned position is the first one not held out.
    """
    parts: list[np.ndarray] = []
    have = 0
    boundary: Position = (0, 0)
    for positions, texts in corpus.all_documents():
        encoded = encode_documents(texts, num_threads=tokenizer_threads)
        for pos, doc in zip(positions, encoded, strict=True):
            parts.append(np.asarray([EOT_TOKEN, *doc], dtype=np.int32))
            have += len(doc) + 1
            boundary = (pos[0], pos[1] + 1)
            if have >= n_tokens:
                return np.concatenate(parts)[:n_tokens], boundary
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
    return tokens, (corpus.num_units, 0)


def validation_rows(val_tokens: int, block_size: int) -> int:
    """Rows of ``block_size + 1`` (stride ``block_size``) that ``val_tokens`` tokens make."""
    return max(0, (val_tokens - 1) // block_size)


class ValidationBatches(IterableDataset):
    """One rank's share of a fixed validation token set, in the same number of batches on every rank.

    The rows are split into ``world_size`` contiguous parts whose sizes differ by at most one, so the
    union over ranks is the whole set whatever the number of ranks. Each rank cuts its part into
    ``num_batches`` batches (sizes differ by at most one row): DDP needs equal batch counts.

    Args:
        tokens: the validation token stream (n_rows * block_size + 1 tokens are used).
        block_size: tokens per row the model sees.
        batch_size: the target rows per batch.
        rank: this rank.
        world_size: number of ranks.
    """

    def __init__(self, tokens: np.ndarray, *, block_size: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        validate_shape(block_size, batch_size)
        ReaderLayout(rank, world_size)
        n_rows = validation_rows(len(tokens), block_size)
        if n_rows < 1:
            raise ValueError(
                f"validation data has {len(tokens)} tokens, shorter than one block of "
                f"{block_size + 1}: lower block_size or raise val_tokens / add validation documents"
            )
        if n_rows < world_size:
            raise ValueError(f"validation data has {n_rows} rows, fewer than world_size={world_size}")
        self.tokens = np.ascontiguousarray(tokens[: n_rows * block_size + 1])
        self.block_size = block_size
        self.n_rows = n_rows
        lo, hi = rank * n_rows // world_size, (rank + 1) * n_rows // world_size
        self.rows = np.arange(lo, hi)
        min_rows, max_rows = n_rows // world_size, math.ceil(n_rows / world_size)
        self.num_batches = max(1, min(math.ceil(max_rows / batch_size), min_rows))

    def __iter__(self) -> Iterator[torch.Tensor]:
        offsets = np.arange(self.block_size + 1)
        for rows in np.array_split(self.rows, self.num_batches):
            index = rows[:, None] * self.block_size + offsets  # (b, T+1)
            yield torch.from_numpy(self.tokens[index].astype(np.int64))
