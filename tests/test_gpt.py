"""GPT-2 model: parameter counts, causality, tying, initialisation."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from polar_lightning.models import GPT, PRESETS, GPTConfig, PresetName, count_parameters

# GPT-2's published sizes counted with biases, learned positions and a tied head, vocabulary 50257
# (the figures HF transformers reports for gpt2 / gpt2-medium / gpt2-large).
PUBLISHED_COUNTS = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080}


def tiny_config(**overrides) -> GPTConfig:
    fields = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=101, vocab_multiple=8)
    fields.update(overrides)
    return GPTConfig(**fields)


@pytest.mark.parametrize("preset", sorted(PUBLISHED_COUNTS))
def test_published_parameter_counts_without_allocation(preset: str) -> None:
    config = GPTConfig.from_preset(preset, vocab_size=50257, vocab_multiple=1)
    assert count_parameters(config) == PUBLISHED_COUNTS[preset]


@pytest.mark.parametrize("preset", sorted(PUBLISHED_COUNTS))
def test_padding_to_50304_adds_47_rows(preset: str) -> None:
    config = GPTConfig.from_preset(preset)
    assert config.padded_vocab_size == 50304
    assert count_parameters(config) == PUBLISHED_COUNTS[preset] + 47 * config.n_embd


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("tie", [True, False])
def test_count_matches_meta_instantiation(preset: str, tie: bool) -> None:
    config = GPTConfig.from_preset(preset, tie_embeddings=tie)
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_parameters() == count_parameters(config)


def test_untied_head_adds_one_embedding() -> None:
    tied = GPTConfig.from_preset("gpt2-small")
    untied = GPTConfig.from_preset("gpt2-small", tie_embeddings=False)
    assert count_parameters(untied) - count_parameters(tied) == 50304 * 768


def test_unknown_preset_names_it_and_lists_valid() -> None:
    with pytest.raises(ValueError, match="gpt2-huge") as info:
        GPTConfig.from_preset("gpt2-huge")
    for name in PRESETS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "fields", [dict(n_head=3), dict(n_layer=0), dict(dropout=1.5), dict(vocab_size=-1)]
)
def test_invalid_config_raises(fields: dict) -> None:
    with pytest.raises(ValueError):
        tiny_config(**fields)


def test_preset_literal_lists_every_preset() -> None:
    assert list(get_args(PresetName)) == list(PRESETS)


def test_presets_have_issue_shapes() -> None:
    assert PRESETS["gpt2-small"] == (12, 12, 768, 1024)
    assert PRESETS["gpt2-medium"] == (24, 16, 1024, 1024)
    assert PRESETS["gpt2-large"] == (36, 20, 1280, 1024)


def test_logits_shape_excludes_padding() -> None:
    config = tiny_config()
    assert config.padded_vocab_size == 104
    model = GPT(config)
    logits = model(torch.randint(0, 101, (3, 16)))
    assert logits.shape == (3, 16, 101)


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 101, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 101, (2, 7))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    # The later positions do see the change (the check above is not vacuous).
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_past_tokens_do_change_future_logits() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 101, (1, 16))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % 101
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_tied_embedding_shares_storage_and_gradient() -> None:
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    model(torch.randint(0, 101, (2, 8))).sum().backward()
    assert model.transformer.wte.weight.grad is not None
    untied = GPT(tiny_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    names = {n for n, _ in untied.named_parameters()}
    assert "lm_head.weight" in names and "transformer.wte.weight" in names


def test_init_std() -> None:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=4096)
    model = GPT(config)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            assert torch.all(p == 1), name
        else:
            assert torch.all(p == 0), name


def test_dropout_defaults_to_zero_and_train_is_deterministic() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_config()).train()
    idx = torch.randint(0, 101, (2, 16))
    torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)


def test_rejects_sequence_longer_than_context() -> None:
    model = GPT(tiny_config())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bf16_autocast_forward_backward_cpu() -> None:
    model = GPT(tiny_config())
    idx = torch.randint(0, 101, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float().reshape(-1, 101), idx.reshape(-1)).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
