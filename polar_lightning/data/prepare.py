"""``polar-lightning prepare``: tokenize a corpus once into llm.c uint16 shards, restartably.

Output directory:
- ``{prefix}_val_000000.bin``: the held-out documents (the first documents of the corpus, until
  ``val_tokens`` tokens), as the streaming path holds out its validation documents;
- ``{prefix}_train_NNNNNN.bin``: the rest, ``shard_tokens`` tokens per shard (documents may span two
  shards, as in llm.c);
- ``manifest.json``: settings and, per finished shard, where in the corpus it ends.

Each shard is written to a temporary file and renamed, then recorded in the manifest; a restarted run
checks the recorded shards and continues after the last good one without re-tokenizing it.

Run ``python -m polar_lightning.data.prepare --help`` (or ``polar-lightning prepare --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from polar_lightning.data.documents import DEFAULT_DATASET, DEFAULT_NAME, Corpus, CorpusSpec, Position
from polar_lightning.data.shards import MAX_SHARD_TOKENS, ShardError, read_header, write_shard
from polar_lightning.data.tokenizer import EOT_TOKEN, RANKS_SHA256, encode_documents

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# llm.c's fineweb.py writes 1e8 tokens per shard (200 MB of uint16).
DEFAULT_SHARD_TOKENS = 100_000_000
# Same default as FineWebDataModule.val_tokens.
DEFAULT_VAL_TOKENS = 2**20


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _default_prefix(spec: CorpusSpec) -> str:
    base = spec.dataset.rstrip("/").split("/")[-1] if not spec.data_files else "local"
    return "".join(c if c.isalnum() or c in "-." else "-" for c in base.lower()) or "corpus"


def _load_manifest(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out_dir / MANIFEST
    fresh = {"format": MANIFEST_FORMAT, "settings": settings, "val": None, "train": [], "complete": False}
    if not path.exists():
        return fresh
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}; remove it to start over") from err
    if manifest.get("settings") != settings:
        old = manifest.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        raise ValueError(
            f"{out_dir} was prepared with different settings ({', '.join(diff)}): use another output "
            "directory or remove it"
        )

    def intact(entry: dict[str, Any]) -> bool:
        try:
            return read_header(out_dir / entry["file"]) == entry["tokens"]
        except (FileNotFoundError, ShardError):
            return False

    if manifest["val"] is not None and not intact(manifest["val"]):
        return fresh
    good = []
    for entry in manifest["train"]:
        if not intact(entry):
            manifest["complete"] = False
            break
        good.append(entry)
    manifest["train"] = good
    return manifest


def prepare_shards(
    spec: CorpusSpec,
    out_dir: str | os.PathLike[str],
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_tokens: int = DEFAULT_VAL_TOKENS,
    max_tokens: int | None = None,
    prefix: str | None = None,
    tokenizer_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize ``spec`` into shards in ``out_dir`` (resuming a previous run there); return the manifest.

    Args:
        spec: the corpus.
        out_dir: output directory (created).
        shard_tokens: tokens per training shard.
        val_tokens: tokens of held-out documents for the validation shard (0: none).
        max_tokens: stop after this many training tokens (None: the whole corpus).
        prefix: shard file prefix (default: from the dataset name).
        tokenizer_threads: threads for tiktoken (default: the CPUs available).
        progress: show a tqdm progress bar.
    """
    if not 1 <= shard_tokens <= MAX_SHARD_TOKENS:
        raise ValueError(f"shard_tokens must be in [1, {MAX_SHARD_TOKENS}], got {shard_tokens}")
    if val_tokens < 0:
        raise ValueError(f"val_tokens must be >= 0, got {val_tokens}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    threads = tokenizer_threads or len(os.sched_getaffinity(0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or _default_prefix(spec)
    settings = {
        "dataset": spec.dataset, "name": spec.name, "data_files": list(spec.data_files or []),
        "split": spec.split, "text_column": spec.text_column, "shard_tokens": shard_tokens,
        "val_tokens": val_tokens, "max_tokens": max_tokens, "prefix": prefix,
        "tokenizer_sha256": RANKS_SHA256,
    }
    manifest = _load_manifest(out, settings)
    if manifest["complete"]:
        return manifest
    corpus = Corpus(spec)

    if manifest["val"] is None:
        holdout: Position = (0, 0)
        if val_tokens:
            tokens, holdout = _held_out_documents(corpus, val_tokens, threads)
            name = f"{prefix}_val_000000.bin"
            write_shard(out / name, tokens)
            manifest["val"] = {"file": name, "tokens": len(tokens), "holdout": list(holdout)}
        else:
            manifest["val"] = {"file": None, "tokens": 0, "holdout": [0, 0]}
        manifest["train"] = []
        _write_json(out / MANIFEST, manifest)

    if manifest["train"]:
        last = manifest["train"][-1]["end"]
        position, offset = tuple(last["position"]), last["offset"]
    else:
        position, offset = tuple(manifest["val"]["holdout"]), 0
    written = sum(e["tokens"] for e in manifest["train"])
    bar = tqdm(total=max_tokens, initial=written, unit="tok", unit_scale=True, disable=not progress,
               desc=f"prepare {spec.describe()}")
    buffer = np.empty(shard_tokens, dtype=np.uint16)  # (shard_tokens,)
    filled = 0

    def flush(end: Position, end_offset: int) -> None:
        index = len(manifest["train"])
        name = f"{prefix}_train_{index:06d}.bin"
        write_shard(out / name, buffer[:filled])
        manifest["train"].append(
            {"file": name, "tokens": filled, "end": {"position": list(end), "offset": end_offset}}
        )
        _write_json(out / MANIFEST, manifest)

    budget = None if max_tokens is None else max_tokens - written
    if budget is not None and budget <= 0:
        bar.close()
        manifest["complete"] = True
        _write_json(out / MANIFEST, manifest)
        return manifest
    try:
        for positions, texts in corpus.all_documents(start=position):
            for pos, doc in zip(positions, encode_documents(texts, num_threads=threads), strict=True):
                tokens = np.asarray([EOT_TOKEN, *doc], dtype=np.uint16)
                done = offset if pos == position else 0
                while done < len(tokens):
                    take = min(len(tokens) - done, shard_tokens - filled)
                    if budget is not None:
                        take = min(take, budget)
                    buffer[filled : filled + take] = tokens[done : done + take]
                    filled, done = filled + take, done + take
                    bar.update(take)
                    if budget is not None:
                        budget -= take
                    end, end_offset = (pos, done) if done < len(tokens) else ((pos[0], pos[1] + 1), 0)
                    if filled == shard_tokens or budget == 0:
                        flush(end, end_offset)
                        filled = 0
                    if budget == 0:
                        manifest["complete"] = True
                        _write_json(out / MANIFEST, manifest)
                        return manifest
        if filled:
            flush((corpus.num_units, 0), 0)
        manifest["complete"] = True
        _write_json(out / MANIFEST, manifest)
        return manifest
    finally:
        bar.close()


def _held_out_documents(corpus: Corpus, val_tokens: int, threads: int) -> tuple[np.ndarray, Position]:
    parts, have = [], 0
    for positions, texts in corpus.all_documents():
        for pos, doc in zip(positions, encode_documents(texts, num_threads=threads), strict=True):
            parts.append(np.asarray([EOT_TOKEN, *doc], dtype=np.uint16))
            have += len(doc) + 1
            if have >= val_tokens:
                return np.concatenate(parts), (pos[0], pos[1] + 1)
    raise ValueError(
        f"{corpus.spec.describe()} has only {have} tokens, not more than val_tokens={val_tokens}: "
        "nothing would be left for training"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``polar-lightning prepare``."""
    p = argparse.ArgumentParser(
        prog="polar-lightning prepare",
        description="Tokenize a corpus (hub dataset or local parquet/jsonl/txt) into llm.c uint16 shards. "
        "Restartable: rerun the same command to continue after an interruption.",
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help="hub dataset id, 'sample' (the corpus shipped with polar_lightning), or a local "
                   "file/dir/glob (default: %(default)s)")
    p.add_argument("--name", default=DEFAULT_NAME, help="hub config name (default: %(default)s)")
    p.add_argument("--data-files", nargs="+", default=None, help="local files or globs (override --dataset)")
    p.add_argument("--split", default="train", help="hub split (default: %(default)s)")
    p.add_argument("--text-column", default="text", help="column with the text (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prefix", default=None, help="shard file prefix (default: from the dataset name)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                   help="tokens per training shard (default: %(default)s, as llm.c)")
    p.add_argument("--val-tokens", type=int, default=DEFAULT_VAL_TOKENS,
                   help="tokens of held-out documents in the validation shard (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="stop after this many training tokens")
    p.add_argument("--threads", type=int, default=None, help="tokenizer threads (default: all CPUs)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``polar-lightning prepare`` and ``python -m polar_lightning.data.prepare``."""
    args = build_parser().parse_args(argv)
    spec = CorpusSpec(dataset=args.dataset, name=args.name, data_files=args.data_files, split=args.split,
                      text_column=args.text_column)
    manifest = prepare_shards(
        spec, args.out, shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
        max_tokens=args.max_tokens, prefix=args.prefix, tokenizer_threads=args.threads,
        progress=not args.no_progress,
    )
    train = manifest["train"]
    print(
        f"{args.out}: {len(train)} train shards, {sum(e['tokens'] for e in train):,} train tokens, "
        f"{manifest['val']['tokens']:,} validation tokens",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
