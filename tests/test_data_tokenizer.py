"""The offline GPT-2 tokenizer: known ids, checksum, and tiktoken's own loader as a reference."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from polar_lightning.data.tokenizer import (
    EOT_TOKEN,
    RANKS_PATH,
    RANKS_SHA256,
    VOCAB_SIZE,
    TokenizerAssetError,
    documents_to_tokens,
    encode_documents,
    gpt2_encoding,
    load_gpt2_ranks,
)

# Published GPT-2 ids (OpenAI's encoder.json / tiktoken "gpt2"); e.g. tiktoken's README and the GPT-2
# tokenizer demos show "Hello world" -> [15496, 995].
KNOWN = {
    "Hello world": [15496, 995],
    "The quick brown fox": [464, 2068, 7586, 21831],
    " hello": [23748],
    "<|endoftext|>": [27, 91, 437, 1659, 5239, 91, 29],  # as ordinary text, not the special token
}


@pytest.mark.parametrize("text", sorted(KNOWN))
def test_known_encodings(text: str) -> None:
    assert gpt2_encoding().encode_ordinary(text) == KNOWN[text]


def test_vocabulary_and_special_token() -> None:
    enc = gpt2_encoding()
    assert enc.n_vocab == VOCAB_SIZE == 50257
    assert enc.eot_token == EOT_TOKEN == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN]


def test_shipped_ranks_match_published_sha256_and_tiktoken_loader(tmp_path) -> None:
    raw = gzip.decompress(RANKS_PATH.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == RANKS_SHA256
    plain = tmp_path / "gpt2.tiktoken"
    plain.write_bytes(raw)
    # tiktoken's own parser (with its own hash check) is the reference for ours
    assert load_gpt2_ranks() == load_tiktoken_bpe(str(plain), expected_hash=RANKS_SHA256)


def test_corrupt_or_missing_ranks_raise(tmp_path) -> None:
    raw = bytearray(gzip.decompress(RANKS_PATH.read_bytes()))
    raw[100] ^= 1
    bad = tmp_path / "bad.tiktoken.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(TokenizerAssetError, match="sha256"):
        load_gpt2_ranks(bad)
    with pytest.raises(TokenizerAssetError, match="not found"):
        load_gpt2_ranks(tmp_path / "missing.gz")
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"not gzip")
    with pytest.raises(TokenizerAssetError, match="gzip"):
        load_gpt2_ranks(garbage)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_batch_encoding_round_trips(texts: list[str]) -> None:
    enc = gpt2_encoding()
    encoded = encode_documents(texts, num_threads=2)
    assert encoded == [enc.encode_ordinary(t) for t in texts]
    assert [enc.decode(e) for e in encoded] == texts


def test_documents_to_tokens_prefixes_each_document_with_eot() -> None:
    enc = gpt2_encoding()
    texts = ["Hello world", "a b c", "x"]
    tokens = documents_to_tokens(texts, num_threads=2)
    expected = [t for text in texts for t in [EOT_TOKEN, *enc.encode_ordinary(text)]]
    assert tokens.dtype == np.int32
    assert tokens.tolist() == expected


def test_lone_surrogates_are_replaced_not_raised() -> None:
    encoded = encode_documents(["ok \udcff text", "fine"])
    assert gpt2_encoding().decode(encoded[0]) == "ok \ufffd text"
    assert encoded[1] == gpt2_encoding().encode_ordinary("fine")


def test_invalid_thread_count() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        encode_documents(["a"], num_threads=0)
