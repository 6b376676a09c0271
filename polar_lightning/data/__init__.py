"""Data for GPT-2 training: offline GPT-2 tokenizer, streamed or pre-tokenized FineWeb, exact resume.

``FineWebDataModule`` is the entry point; the pieces below it are public for scripts and tests. Names
are resolved lazily so that importing the tokenizer or the shard reader does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Corpus": "polar_lightning.data.documents",
    "CorpusSpec": "polar_lightning.data.documents",
    "DEFAULT_DATASET": "polar_lightning.data.documents",
    "DEFAULT_NAME": "polar_lightning.data.documents",
    "DataSourceError": "polar_lightning.data.documents",
    "EOT_TOKEN": "polar_lightning.data.tokenizer",
    "FineWebDataModule": "polar_lightning.data.datamodule",
    "ReaderLayout": "polar_lightning.data.streaming",
    "SAMPLE_DATASET": "polar_lightning.data.documents",
    "SAMPLE_DIR": "polar_lightning.data.documents",
    "ShardError": "polar_lightning.data.shards",
    "ShardSet": "polar_lightning.data.shards",
    "ShardStream": "polar_lightning.data.shards",
    "TrainStream": "polar_lightning.data.streaming",
    "UnitSlice": "polar_lightning.data.documents",
    "VOCAB_SIZE": "polar_lightning.data.tokenizer",
    "ValidationBatches": "polar_lightning.data.streaming",
    "collect_validation_tokens": "polar_lightning.data.streaming",
    "documents_to_tokens": "polar_lightning.data.tokenizer",
    "encode_documents": "polar_lightning.data.tokenizer",
    "gpt2_encoding": "polar_lightning.data.tokenizer",
    "list_shards": "polar_lightning.data.shards",
    "open_dataset": "polar_lightning.data.documents",
    "open_shard": "polar_lightning.data.shards",
    "pack_batches": "polar_lightning.data.streaming",
    "prepare_shards": "polar_lightning.data.prepare",
    "read_header": "polar_lightning.data.shards",
    "reader_slices": "polar_lightning.data.documents",
    "write_shard": "polar_lightning.data.shards",
}

__all__ = [
    "Corpus",
    "CorpusSpec",
    "DEFAULT_DATASET",
    "DEFAULT_NAME",
    "DataSourceError",
    "EOT_TOKEN",
    "FineWebDataModule",
    "ReaderLayout",
    "SAMPLE_DATASET",
    "SAMPLE_DIR",
    "ShardError",
    "ShardSet",
    "ShardStream",
    "TrainStream",
    "UnitSlice",
    "VOCAB_SIZE",
    "ValidationBatches",
    "collect_validation_tokens",
    "documents_to_tokens",
    "encode_documents",
    "gpt2_encoding",
    "list_shards",
    "open_dataset",
    "open_shard",
    "pack_batches",
    "prepare_shards",
    "read_header",
    "reader_slices",
    "write_shard",
]

if TYPE_CHECKING:
    from polar_lightning.data.datamodule import FineWebDataModule
    from polar_lightning.data.documents import (
        DEFAULT_DATASET,
        DEFAULT_NAME,
        SAMPLE_DATASET,
        SAMPLE_DIR,
        Corpus,
        CorpusSpec,
        DataSourceError,
        UnitSlice,
        open_dataset,
        reader_slices,
    )
    from polar_lightning.data.prepare import prepare_shards
    from polar_lightning.data.shards import (
        ShardError,
        ShardSet,
        ShardStream,
        list_shards,
        open_shard,
        read_header,
        write_shard,
    )
    from polar_lightning.data.streaming import (
        ReaderLayout,
        TrainStream,
        ValidationBatches,
        collect_validation_tokens,
        pack_batches,
    )
    from polar_lightning.data.tokenizer import (
        EOT_TOKEN,
        VOCAB_SIZE,
        documents_to_tokens,
        encode_documents,
        gpt2_encoding,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'polar_lightning.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
