"""llm.c shards: format round trip, bad files, reader order/disjointness/resume, restartable prepare."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from polar_lightning.data import prepare as prepare_module
from polar_lightning.data.documents import Corpus, CorpusSpec
from polar_lightning.data.prepare import main, prepare_shards
from polar_lightning.data.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    ShardError,
    ShardSet,
    ShardStream,
    list_shards,
    open_shard,
    read_header,
    write_shard,
)
from polar_lightning.data.streaming import ReaderLayout
from polar_lightning.data.tokenizer import documents_to_tokens


def write_parquet_corpus(folder: Path, n_files: int = 3, docs_per_file: int = 20) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for f in range(n_files):
        docs = [f"doc {f}-{i} " + "lorem ipsum " * (5 + (3 * i + f) % 13) for i in range(docs_per_file)]
        pq.write_table(pa.table({"text": docs}), folder / f"p-{f}.parquet", row_group_size=8)
        texts += docs
    return texts


def test_round_trip_and_header_layout(tmp_path: Path) -> None:
    tokens = np.array([50256, 15496, 995, 0, 65535], dtype=np.int64)
    path = write_shard(tmp_path / "x_train_000000.bin", tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[:3].tolist() == [SHARD_MAGIC, 1, 5] and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    assert read_header(path) == 5
    assert open_shard(path).tolist() == tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))
    assert list_shards(tmp_path, "train") == [path]
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "big.bin", np.array([70000]))


def test_missing_truncated_and_corrupt_shards_are_named(tmp_path: Path) -> None:
    good = write_shard(tmp_path / "a.bin", np.arange(100))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_header(tmp_path / "missing.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(ShardError, match="cut.bin.*truncated"):
        ShardSet([good, cut], block_size=4)
    stub = tmp_path / "stub.bin"
    stub.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ShardError, match="stub.bin.*truncated"):
        read_header(stub)
    bad = tmp_path / "bad.bin"
    data = bytearray(good.read_bytes())
    data[0] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="bad.bin.*corrupt"):
        open_shard(bad)
    long = tmp_path / "long.bin"
    long.write_bytes(good.read_bytes() + b"\0\0")
    with pytest.raises(ShardError, match="long.bin"):
        read_header(long)


def make_shards(tmp_path: Path, sizes: list[int]) -> ShardSet:
    start, paths = 0, []
    for i, n in enumerate(sizes):
        paths.append(write_shard(tmp_path / f"t_train_{i:06d}.bin", np.arange(start, start + n) % 60000))
        start += n
    return ShardSet(paths, block_size=4)


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_two_ranks_two_workers_cover_all_rows_once_per_pass(tmp_path: Path, order: str) -> None:
    shards = make_shards(tmp_path, [41, 29, 57])  # 10 + 7 + 14 = 31 rows of 5 tokens
    assert shards.total_rows == 31
    seen = collections.Counter()
    for rank in range(2):
        stream = ShardStream(shards, batch_size=1, layout=ReaderLayout(rank, 2, 2), order=order, seed=7)
        for worker in range(2):
            n = stream.rows_per_pass(stream.layout.reader(worker))
            rows = [r for _, r in zip(range(n), stream.rows(worker), strict=False)]
            seen.update(rows)
    assert seen == collections.Counter({(s, r): 1 for s in range(3) for r in range(int(shards.rows[s]))})


def test_random_order_is_seeded_and_changes_every_pass(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [200, 150])
    a = ShardStream(shards, batch_size=1, order="random", seed=1)
    b = ShardStream(shards, batch_size=1, order="random", seed=1)
    c = ShardStream(shards, batch_size=1, order="random", seed=2)
    n = shards.total_rows
    first = [r for _, r in zip(range(2 * n), a.rows(0), strict=False)]
    assert first == [r for _, r in zip(range(2 * n), b.rows(0), strict=False)]
    assert first != [r for _, r in zip(range(2 * n), c.rows(0), strict=False)]
    assert first[:n] != first[n:] and sorted(first[:n]) == sorted(first[n:])
    seq = ShardStream(shards, batch_size=1, order="sequential")
    assert [r for _, r in zip(range(n), seq.rows(0), strict=False)] == sorted(first[:n])


def test_batches_are_windows_of_the_shard(tmp_path: Path) -> None:
    shards = make_shards(tmp_path, [41])
    stream = ShardStream(shards, batch_size=3, order="sequential")
    batch = next(stream.batches(0))
    assert batch.dtype == torch.int64 and batch.shape == (3, 5)
    assert torch.equal(batch, torch.arange(3)[:, None] * 4 + torch.arange(5))


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_resume_is_exact_for_every_rank(tmp_path: Path, order: str) -> None:
    shards = make_shards(tmp_path, [97, 61, 130])
    for rank in range(2):
        def loader(start: int, rank: int = rank) -> torch.utils.data.DataLoader:
            ds = ShardStream(shards, batch_size=2, layout=ReaderLayout(rank, 2, 2), order=order, seed=3,
                             start_batches=start)
            return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)

        full = [b for _, b in zip(range(20), loader(0), strict=False)]  # > 2 passes per reader
        for stop in (7, 8):
            resumed = [b for _, b in zip(range(20 - stop), loader(stop), strict=False)]
            assert all(torch.equal(x, y) for x, y in zip(full[stop:], resumed, strict=True))


def test_prepare_writes_the_corpus_tokens_in_order(tmp_path: Path) -> None:
    texts = write_parquet_corpus(tmp_path / "c")
    out = tmp_path / "shards"
    manifest = prepare_shards(CorpusSpec(data_files=(str(tmp_path / "c"),)), out, shard_tokens=1000,
                              val_tokens=300, progress=False)
    val = list_shards(out, "val")
    train = list_shards(out, "train")
    assert len(val) == 1 and len(train) == len(manifest["train"]) > 2
    written = np.concatenate([open_shard(p) for p in val + train]).astype(np.int32)
    assert written.tolist() == documents_to_tokens(texts).tolist()
    assert 300 <= len(open_shard(val[0])) and all(read_header(p) == 1000 for p in train[:-1])
    # the validation shard holds whole documents: the held-out ones
    held = int(manifest["val"]["holdout"][1])
    assert len(open_shard(val[0])) == len(documents_to_tokens(texts[:held]))


def test_prepare_restarts_without_redoing_finished_shards(tmp_path: Path, monkeypatch) -> None:
    write_parquet_corpus(tmp_path / "c")
    spec = CorpusSpec(data_files=(str(tmp_path / "c"),))
    reference = prepare_shards(spec, tmp_path / "ref", shard_tokens=700, val_tokens=200, progress=False)

    calls = {"n": 0}
    real_write = prepare_module.write_shard

    def interrupted_write(path, tokens):
        if calls["n"] == 3:  # val shard + 2 train shards done, then the process "dies"
            raise KeyboardInterrupt
        calls["n"] += 1
        return real_write(path, tokens)

    monkeypatch.setattr(prepare_module, "write_shard", interrupted_write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(spec, out, shard_tokens=700, val_tokens=200, progress=False)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert len(done) == 3
    (out / "leftover_train_000009.bin.tmp").write_bytes(b"partial")  # a crash mid-write leaves this

    writes: list[str] = []

    def counting_write(path, tokens):
        writes.append(Path(path).name)
        return real_write(path, tokens)

    monkeypatch.setattr(prepare_module, "write_shard", counting_write)
    manifest = prepare_shards(spec, out, shard_tokens=700, val_tokens=200, progress=False)
    assert not set(writes) & set(done)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin") if p.name in done} == done
    assert manifest["train"] == reference["train"] and manifest["val"] == reference["val"]
    for name in [e["file"] for e in reference["train"]] + [reference["val"]["file"]]:
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    # a damaged finished shard is detected and rewritten from its start
    victim = out / reference["train"][1]["file"]
    victim.write_bytes(victim.read_bytes()[:-10])
    writes.clear()
    prepare_shards(spec, out, shard_tokens=700, val_tokens=200, progress=False)
    assert writes[0] == victim.name
    assert victim.read_bytes() == (tmp_path / "ref" / victim.name).read_bytes()
    with pytest.raises(ValueError, match="shard_tokens"):
        prepare_shards(spec, out, shard_tokens=900, val_tokens=200, progress=False)


def test_prepare_cli_and_max_tokens(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c")
    out = tmp_path / "s"
    assert main(["--data-files", str(tmp_path / "c"), "--out", str(out), "--shard-tokens", "500",
                 "--val-tokens", "100", "--max-tokens", "1234", "--no-progress", "--prefix", "tiny"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(e["tokens"] for e in manifest["train"]) == 1234
    assert [p.name for p in list_shards(out, "train")] == [f"tiny_train_{i:06d}.bin" for i in range(3)]
    help_text = subprocess.run([sys.executable, "-m", "polar_lightning.data.prepare", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "--shard-tokens" in help_text and "--data-files" in help_text


def test_prepare_rejects_validation_that_takes_everything(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", n_files=1, docs_per_file=3)
    corpus = Corpus(CorpusSpec(data_files=(str(tmp_path / "c"),)))
    corpus_tokens = len(documents_to_tokens([t for _, b in corpus.all_documents() for t in b]))
    with pytest.raises(ValueError, match="val_tokens"):
        prepare_shards(CorpusSpec(data_files=(str(tmp_path / "c"),)), tmp_path / "o",
                       val_tokens=corpus_tokens + 1, progress=False)
