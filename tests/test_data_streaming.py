"""Streaming: document split across ranks x workers, packing, validation split, resume, bad input."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from polar_lightning.data.documents import Corpus, CorpusSpec, DataSourceError, reader_slices
from polar_lightning.data.streaming import (
    ReaderLayout,
    TrainStream,
    ValidationBatches,
    collect_validation_tokens,
    pack_batches,
)
from polar_lightning.data.tokenizer import EOT_TOKEN, documents_to_tokens, gpt2_encoding


def write_parquet_corpus(
    folder: Path, n_files: int = 3, docs_per_file: int = 14, row_group: int = 5
) -> list[str]:
    """Tiny parquet files whose documents are unique and say who they are; returns all texts in order."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for f in range(n_files):
        docs = [f"document {f}-{i}: " + "word " * (3 + (7 * i + f) % 11) for i in range(docs_per_file)]
        pq.write_table(pa.table({"text": docs, "id": list(range(docs_per_file))}),
                       folder / f"part-{f:05d}.parquet", row_group_size=row_group)
        texts += docs
    return texts


@pytest.mark.parametrize("units", [1, 3, 4, 6, 7, 12, 40])
@pytest.mark.parametrize("readers", [1, 2, 4, 5])
def test_reader_slices_partition_every_position_once(units: int, readers: int) -> None:
    rows = 11
    owner = collections.Counter()
    for r in range(readers):
        for s in reader_slices(units, readers, r):
            for j in range(s.offset, rows, s.stride):
                owner[(s.unit, j)] += 1
    assert owner == collections.Counter({(u, j): 1 for u in range(units) for j in range(rows)})


def test_reader_slices_validate() -> None:
    with pytest.raises(ValueError, match="reader"):
        reader_slices(4, 2, 2)
    with pytest.raises(ValueError, match="num_units"):
        reader_slices(0, 2, 0)


def test_two_ranks_two_workers_read_the_corpus_once(tmp_path: Path) -> None:
    texts = write_parquet_corpus(tmp_path / "c")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c" / "*.parquet"),)))
    assert corpus.num_units == 9  # 3 files x 3 row groups after resharding
    seen: list[str] = []
    per_reader = []
    for rank in range(2):
        stream = TrainStream(corpus, block_size=8, batch_size=2, layout=ReaderLayout(rank, 2, 2), seed=3)
        for worker in range(2):
            docs = [t for _, batch in stream.documents(worker, epoch=0) for t in batch]
            per_reader.append(len(docs))
            seen += docs
    assert sorted(seen) == sorted(texts)
    assert len(set(seen)) == len(seen)
    assert min(per_reader) > 0


def test_holdout_and_training_readers_cover_corpus(tmp_path: Path) -> None:
    texts = write_parquet_corpus(tmp_path / "c")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),)))
    tokens, holdout = collect_validation_tokens(corpus, 120)
    held = [t for positions, batch in corpus.all_documents() for p, t in zip(positions, batch, strict=True)
            if p < holdout]
    assert tokens.tolist() == documents_to_tokens(held).tolist()[:120]
    trained = []
    for rank in range(2):
        layout = ReaderLayout(rank, 2, 2)
        stream = TrainStream(corpus, block_size=8, batch_size=2, layout=layout, holdout=holdout)
        for worker in range(2):
            trained += [t for _, batch in stream.documents(worker, epoch=1) for t in batch]
    assert sorted(held + trained) == sorted(texts)
    assert not set(held) & set(trained)


def test_packing_is_the_stream_in_rows_with_shared_boundary_token() -> None:
    stream = np.arange(1000, dtype=np.int32)
    chunks = [stream[:37], stream[37:500], stream[500:]]
    batches = list(pack_batches(chunks, block_size=10, batch_size=3))
    assert all(b.dtype == torch.int64 and b.shape == (3, 11) for b in batches)
    rows = torch.cat(batches)
    # row i is stream[10 i : 10 i + 11]: every token is a target once, nothing padded
    assert torch.equal(rows, torch.arange(len(rows))[:, None] * 10 + torch.arange(11))
    assert len(batches) == (1000 - 1) // 30
    skipped = list(pack_batches(chunks, block_size=10, batch_size=3, skip_tokens=2 * 30))
    assert all(torch.equal(a, b) for a, b in zip(batches[2:], skipped, strict=True))


def test_train_batches_come_from_reader_documents(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),)))
    stream = TrainStream(corpus, block_size=16, batch_size=2, layout=ReaderLayout(1, 2, 0), shuffle=False)
    docs = [t for _, batch in stream.documents(0, epoch=0) for t in batch]
    expected = documents_to_tokens(docs)
    got = torch.cat(list(_take(stream.batches(0), 3)))
    for i, row in enumerate(got):
        assert row.tolist() == expected[16 * i : 16 * i + 17].tolist()


def _take(iterator, n: int) -> list:
    return [b for _, b in zip(range(n), iterator, strict=False)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_validation_same_tokens_for_any_world_size(world_size: int) -> None:
    tokens = np.arange(10 * 7 + 1 + 5, dtype=np.int32)  # 10 rows of block 7, plus a tail that is not used
    parts = [ValidationBatches(tokens, block_size=7, batch_size=2, rank=r, world_size=world_size)
             for r in range(world_size)]
    counts = {len(list(p)) for p in parts}
    assert len(counts) == 1 and counts == {parts[0].num_batches}
    rows = torch.cat([b for p in parts for b in p])
    assert torch.equal(rows, torch.arange(10)[:, None] * 7 + torch.arange(8))


def test_validation_shorter_than_one_block_raises() -> None:
    with pytest.raises(ValueError, match="shorter than one block"):
        ValidationBatches(np.arange(8, dtype=np.int32), block_size=8, batch_size=1)


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_matches_uninterrupted_for_every_rank(tmp_path: Path, rank: int) -> None:
    write_parquet_corpus(tmp_path / "c", docs_per_file=30)
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),)))
    layout = ReaderLayout(rank, 2, 2)

    def loader(start: int) -> DataLoader:
        ds = TrainStream(corpus, block_size=8, batch_size=2, layout=layout, seed=5, start_batches=start)
        return DataLoader(ds, batch_size=None, num_workers=2)

    full = _take(iter(loader(0)), 14)  # several passes over the readers' documents
    for stop in (5, 6):
        resumed = _take(iter(loader(stop)), 14 - stop)
        assert all(torch.equal(a, b) for a, b in zip(full[stop:], resumed, strict=True))


def test_loader_worker_count_must_match_layout(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),)))
    ds = TrainStream(corpus, block_size=8, batch_size=2, layout=ReaderLayout(0, 1, 2))
    with pytest.raises(RuntimeError, match="workers"):
        next(iter(ds))


def test_empty_whitespace_and_invalid_utf8_documents(tmp_path: Path) -> None:
    enc = gpt2_encoding()
    # parquet with a binary column holding invalid UTF-8, plus empty/whitespace/missing documents
    pq.write_table(pa.table({"text": pa.array([b"good \xff bytes", b"", b"  \n\t ", None, b"last"],
                                              type=pa.binary())}), tmp_path / "b.parquet")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "b.parquet"),)))
    docs = [t for _, batch in corpus.all_documents() for t in batch]
    assert docs == ["good \ufffd bytes", "last"]
    # jsonl with invalid UTF-8 bytes
    (tmp_path / "j.jsonl").write_bytes(b'{"text": "caf\xe9 ok"}\n{"text": "   "}\n{"text": "x y"}\n')
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "j.jsonl"),)))
    docs = [t for _, batch in corpus.all_documents() for t in batch]
    assert docs[0] == "caf\ufffd ok" and len(docs) == 2
    tokens = documents_to_tokens(docs)
    assert (tokens == EOT_TOKEN).sum() == 2
    # txt files: one document per file, invalid bytes replaced, whitespace-only files skipped
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_bytes(b"line one\nline \xfe two\n")
    (tmp_path / "t" / "b.txt").write_bytes(b" \n \n")
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "t"),)))
    docs = [t for _, batch in corpus.all_documents() for t in batch]
    assert docs == ["line one\nline \ufffd two\n"]
    assert enc.decode(enc.encode_ordinary(docs[0])) == docs[0]


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        _ = Corpus(CorpusSpec(data_files=(str(tmp_path / "nope*.parquet"),))).num_units
    write_parquet_corpus(tmp_path / "c", n_files=2)
    bad = tmp_path / "c" / "part-00001.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated: footer gone
    with pytest.raises(DataSourceError, match="part-00001.parquet"):
        _ = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),))).num_units
    with pytest.raises(KeyError, match="content"):
        spec = CorpusSpec(data_files=(str(tmp_path / "c" / "part-00000.parquet"),), text_column="content")
        _ = Corpus(spec).num_units
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported"):
        _ = Corpus(CorpusSpec(data_files=(str(tmp_path / "x.csv"),))).num_units


def test_corrupt_parquet_page_is_named_when_read(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", n_files=1, docs_per_file=200, row_group=200)
    path = tmp_path / "c" / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    for i in range(200, 1200):  # scramble the column data, keep header and footer
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    corpus = Corpus(CorpusSpec(data_files=(str(path),)))
    with pytest.raises(DataSourceError, match="part-00000.parquet"):
        list(corpus.all_documents())


def test_hub_dataset_offline_fails_fast_and_says_what_to_do() -> None:
    code = (
        "import time; t = time.perf_counter()\n"
        "from polar_lightning.data.documents import Corpus, CorpusSpec, DataSourceError\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    Corpus(CorpusSpec()).num_units\n"
        "except DataSourceError as e:\n"
        "    print(round(time.perf_counter() - t, 3)); print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines, out.stderr
    assert float(lines[0]) < 2.0
    message = "\n".join(lines[1:])
    assert "HuggingFaceFW/fineweb" in message and "data_files" in message and "sample" in message


def test_hub_unreachable_without_offline_flag_fails_fast() -> None:
    # No network here: the TCP probe fails at once instead of huggingface_hub's ~25 s of retries.
    code = (
        "import json, time\n"
        "from polar_lightning.data.documents import Corpus, CorpusSpec, DataSourceError\n"
        "from polar_lightning.data.documents import _hub_unreachable_reason\n"
        "reason = _hub_unreachable_reason()\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    Corpus(CorpusSpec(dataset='someone/some-data', name=None)).num_units\n"
        "    print(json.dumps([reason, None, 0]))\n"
        "except DataSourceError as e:\n"
        "    print(json.dumps([reason, str(e), time.perf_counter() - t]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
    reason, message, seconds = json.loads(out.stdout.splitlines()[-1])
    if reason is None:
        pytest.skip("the hub is reachable from this machine")
    assert message is not None and "someone/some-data" in message and "data_files" in message
    assert seconds < 5.0, time.perf_counter() - start
