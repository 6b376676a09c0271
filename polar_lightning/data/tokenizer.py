"""GPT-2 byte-pair encoding built offline from the ranks shipped in ``assets/gpt2.tiktoken.gz``.

``tiktoken.get_encoding("gpt2")`` downloads its vocabulary on first use and fails without a network;
the shipped ranks (see ``assets/NOTICE.md``) build an encoding with identical ids.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

# Token ids and vocabulary size of GPT-2 (Radford et al. 2019; tiktoken's "gpt2" encoding).
EOT_TOKEN = 50256
VOCAB_SIZE = 50257

RANKS_PATH = Path(__file__).parent / "assets" / "gpt2.tiktoken.gz"
# sha256 of the uncompressed ranks, as published by tiktoken for r50k_base.tiktoken (assets/NOTICE.md).
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

# The split regex tiktoken uses for "gpt2"/"r50k_base"; taken from the installed tiktoken so the
# pre-tokenisation always matches the version that encodes.
try:
    from tiktoken_ext.openai_public import r50k_pat_str as GPT2_PATTERN
except ImportError:  # pragma: no cover - tiktoken wheels ship tiktoken_ext
    GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerAssetError(RuntimeError):
    """The shipped GPT-2 ranks are missing or do not match their published checksum."""


def load_gpt2_ranks(path: str | os.PathLike[str] = RANKS_PATH) -> dict[bytes, int]:
    """Read a gzip-compressed ``.tiktoken`` ranks file after checking its sha256.

    Args:
        path: the ``gpt2.tiktoken.gz`` file (default: the copy shipped with the package).

    Returns:
        mapping from token bytes to rank (= token id), 50256 entries.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError as err:
        raise TokenizerAssetError(f"GPT-2 ranks file not found: {path}") from err
    except (OSError, EOFError) as err:
        raise TokenizerAssetError(f"GPT-2 ranks file {path} is not a valid gzip file: {err}") from err
    digest = hashlib.sha256(raw).hexdigest()
    if digest != RANKS_SHA256:
        raise TokenizerAssetError(
            f"GPT-2 ranks file {path} has sha256 {digest}, expected {RANKS_SHA256}: the file is corrupt"
        )
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding (ids identical to ``tiktoken.get_encoding("gpt2")``), built with no network."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_gpt2_ranks(),
        special_tokens={"<|endoftext|>": EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )


def _valid_utf8(text: str) -> str:
    # Lone surrogates (e.g. from JSON "\udcff" escapes) cannot cross into tiktoken's Rust core.
    return text.encode("utf-8", errors="replace").decode("utf-8")


def encode_documents(texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
    """Encode documents with several threads; special-token text is encoded as ordinary text.

    Args:
        texts: documents (str). Unencodable code points are replaced, never raised.
        num_threads: threads for tiktoken's batch encoder, which releases the GIL.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    enc = gpt2_encoding()
    try:
        return enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
    except (UnicodeEncodeError, ValueError, TypeError):
        return enc.encode_ordinary_batch([_valid_utf8(t) for t in texts], num_threads=num_threads)


def documents_to_tokens(texts: Sequence[str], num_threads: int = 1) -> np.ndarray:
    """Tokens of ``texts`` as one int32 array, each document prefixed by EOT 50256 (llm.c's layout)."""
    encoded = encode_documents(texts, num_threads=num_threads)
    total = sum(len(doc) for doc in encoded) + len(encoded)
    eot = (EOT_TOKEN,)
    interleaved = itertools.chain.from_iterable(itertools.chain(eot, doc) for doc in encoded)
    return np.fromiter(interleaved, dtype=np.int32, count=total)  # (total,)
