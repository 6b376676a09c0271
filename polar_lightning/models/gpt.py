"""GPT-2 in plain PyTorch: pre-LayerNorm blocks, learned positions, GELU MLP, causal SDPA attention.

The layout and attribute names follow OpenAI's GPT-2 checkpoints (``transformer.wte``, ``transformer.h[i]
.attn.c_attn``, ...), so Muon/AdamW grouping rules and diagnostics can address layers by name. The model
knows nothing about optimisers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# GPT-2's BPE vocabulary: 50,000 merges + 256 byte tokens + <|endoftext|> (Radford et al. 2019).
GPT2_VOCAB_SIZE = 50257
# Padding the embedding to a multiple of 64 (50257 -> 50304) makes the output matmul tile evenly on GPUs
# (Karpathy's nanoGPT / llm.c); the extra rows are never a target and are sliced off the logits.
DEFAULT_VOCAB_MULTIPLE = 64

# Preset names, spelled out so the CLI can list them in --help and reject others at parse time.
# name -> (n_layer, n_head, n_embd, block_size). Small/medium/large are GPT-2's published shapes
# (Radford et al. 2019, Table 2; the 117M/345M/762M rows, 124M/355M/774M counted with biases and tying).
# gpt2-tiny is this project's CPU demo size: 4 layers x 256 wide trains visibly in minutes on 2 cores.
PresetName = Literal["gpt2-tiny", "gpt2-small", "gpt2-medium", "gpt2-large"]
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "gpt2-tiny": (4, 4, 256, 256),
    "gpt2-small": (12, 12, 768, 1024),
    "gpt2-medium": (24, 16, 1024, 1024),
    "gpt2-large": (36, 20, 1280, 1024),
}


@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT-2 model.

    Args:
        n_layer: Number of transformer blocks.
        n_head: Attention heads per block; must divide ``n_embd``.
        n_embd: Residual stream width.
        block_size: Context length (number of learned positions).
        vocab_size: Number of real tokens (GPT-2 BPE: 50257).
        vocab_multiple: Embedding rows are padded up to a multiple of this (64 -> 50304); 1 disables.
        tie_embeddings: Share the input embedding with the output head (GPT-2 does).
        dropout: Dropout on embeddings, attention and residual branches (0 for pre-training).
        bias: Biases in linear layers and LayerNorms (GPT-2 has them).
    """

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = GPT2_VOCAB_SIZE
    vocab_multiple: int = DEFAULT_VOCAB_MULTIPLE
    tie_embeddings: bool = True
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding matrix: ``vocab_size`` rounded up to ``vocab_multiple``."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """Build a preset's config, with any field overridden by keyword.

        Raises:
            ValueError: ``name`` is not a preset (the message lists the valid ones).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; valid presets: {', '.join(PRESETS)}")
        n_layer, n_head, n_embd, block_size = PRESETS[name]
        fields = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(sorted(unknown))}")
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


def count_parameters(config: GPTConfig) -> int:
    """Number of parameters a :class:`GPT` built from ``config`` has, computed without allocating it."""
    d, L, ff = config.n_embd, config.n_layer, 4 * config.n_embd  # GPT-2's MLP is 4x wide
    b = 1 if config.bias else 0
    ln = d * (1 + b)  # LayerNorm gain (+ bias)
    attn = d * 3 * d + 3 * d * b + d * d + d * b  # c_attn (q, k, v) + c_proj
    mlp = d * ff + ff * b + ff * d + d * b  # c_fc + c_proj
    block = 2 * ln + attn + mlp
    embeddings = config.padded_vocab_size * d + config.block_size * d  # wte + wpe
    head = 0 if config.tie_embeddings else config.padded_vocab_size * d
    return embeddings + L * block + ln + head  # + ln_f


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q/k/v projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward block: Linear(d, 4d) -> GELU (tanh form, as GPT-2) -> Linear(4d, d)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2 language model. ``forward(idx)`` maps token ids (B, T) to logits (B, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm gains, and the two
        residual projections per block scaled by 1/sqrt(2 * n_layer) so the residual stream's variance
        does not grow with depth (Radford et al. 2019, section 2.3)."""
        std = 0.02  # GPT-2's initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    def num_parameters(self) -> int:
        """Parameters counted once each (a tied head is not counted twice)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor) -> Tensor:
        """Logits over the real vocabulary for each position: idx (B, T) -> (B, T, vocab_size)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, padded_vocab_size)
        if self.config.padded_vocab_size != self.config.vocab_size:
            logits = logits[..., : self.config.vocab_size]  # (B, T, vocab_size): padding rows never predicted
        return logits

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B convention:
        6 * (non-embedding parameters + output head) + 12 * n_layer * n_embd * seq_len for attention."""
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        d, L = cfg.n_embd, cfg.n_layer
        matmul_params = L * 12 * d * d + cfg.padded_vocab_size * d  # blocks' weights + lm_head
        return 6.0 * matmul_params + 12.0 * L * d * T
