"""GPT2Module: a GPT-2 trained by the hybrid Muon (polar step) / AdamW optimizer under Lightning.

All optimiser settings are plain typed init arguments, so LightningCLI exposes them as ``--model.*``
keys and a YAML file can switch AdamW / Jordan / You / Polar Express without code changes.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from polar_lightning.models import GPT, GPTConfig, PresetName
from polar_lightning.optim import MuonAdamW, ParamRule, muon_param_groups
from polar_lightning.optim.schedules import warmup_constant_decay, warmup_cosine

PolarMethod = Literal["polar_express", "polar_express_5", "jordan", "you", "newton_schulz", "svd"]

# Dense (no structured sparsity) BF16 tensor-core peaks in FLOP/s, from NVIDIA's data sheets (the
# sheets print the 2:4-sparse figure; dense is half). Checked in order: the first substring of
# torch.cuda.get_device_name() that matches wins, so variants precede their family name.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835e12),  # H100 NVL: 1,671 TFLOPS sparse
    ("H100 PCIe", 756e12),  # H100 PCIe: 1,513 TFLOPS sparse
    ("H100", 989e12),  # H100 SXM: 1,979 TFLOPS sparse
    ("H200", 989e12),  # H200 SXM: 1,979 TFLOPS sparse
    ("A100", 312e12),  # A100 SXM/PCIe: 312 TFLOPS dense BF16
    ("L40S", 362e12),  # L40S: 733 TFLOPS sparse
    ("L4", 121e12),  # L4: 242 TFLOPS sparse
)


def peak_bf16_flops(device: torch.device) -> float | None:
    """Peak dense BF16 FLOP/s of one accelerator, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


class GPT2Module(L.LightningModule):
    """GPT-2 language model trained with Muon (a polar step on hidden matrices) + AdamW.

    Batches are LongTensor (B, T + 1); inputs are ``b[:, :-1]`` and next-token targets ``b[:, 1:]``.

    Args:
        preset: Model size: gpt2-tiny (CPU demo), gpt2-small, gpt2-medium or gpt2-large.
        n_layer: Override the preset's number of blocks.
        n_head: Override the preset's number of attention heads.
        n_embd: Override the preset's width.
        context_length: Override the preset's context length (number of learned positions); the data's
            ``block_size`` may be shorter. (Named apart from the data module's ``block_size`` because
            Lightning merges both modules' hyperparameters into one table.)
        vocab_size: Real vocabulary size; the CLI links it to the data module's.
        tie_embeddings: Share input embedding and output head (GPT-2 does).
        dropout: Dropout probability (0 for pre-training).
        optimizer: "muon": hidden matrices take the polar-step Muon update, everything else AdamW;
            "adamw": every parameter takes AdamW.
        polar_method: Polynomial iteration that approximates the polar factor inside Muon.
        polar_steps: Number of polar iterations (the paper uses 5).
        polar_dtype: Precision of the polar iterations.
        polar_form: How the polar steps are multiplied out: "rectangular" (the more accurate in bf16),
            "gram" (iterate on X X^T), or "auto" (Gram where it needs fewer multiply-adds).
        muon_lr: Peak learning rate of the Muon groups.
        adamw_lr: Peak learning rate of the AdamW groups (embeddings, head, gains, biases; everything
            when ``optimizer="adamw"``).
        muon_weight_decay: Decoupled weight decay of Muon groups.
        adamw_weight_decay: Decoupled weight decay of AdamW groups.
        momentum: Muon momentum.
        nesterov: Nesterov momentum in Muon.
        adjust_lr: Muon's shape-dependent learning-rate scale ("original": sqrt(max(1, rows/cols));
            "match_rms_adamw": 0.2 * sqrt(max(rows, cols))).
        per_head: Orthogonalise Q, K, V and the output projection one attention head at a time.
        adamw_betas: AdamW (beta1, beta2).
        adamw_eps: AdamW epsilon.
        warmup_steps: Steps of linear warm-up from 0 to the peak learning rates.
        schedule: "paper": constant for ``constant_fraction`` of the steps, then linear decay to 0;
            "cosine": cosine decay to ``min_lr_ratio`` of the peak.
        constant_fraction: Share of the steps at the peak learning rate in the "paper" schedule.
        min_lr_ratio: Final learning rate over peak in the "cosine" schedule.
        compile: Compile the model's forward with torch.compile.
        compile_backend: torch.compile backend ("inductor"; "aot_eager" or "eager" for tests).
        peak_flops: Peak FLOP/s of one device for MFU; None looks the GPU up in a table (none on CPU).
    """

    def __init__(
        self,
        preset: PresetName = "gpt2-tiny",
        n_layer: int | None = None,
        n_head: int | None = None,
        n_embd: int | None = None,
        context_length: int | None = None,
        vocab_size: int = 50257,
        tie_embeddings: bool = True,
        dropout: float = 0.0,
        optimizer: Literal["muon", "adamw"] = "muon",
        polar_method: PolarMethod = "polar_express",
        polar_steps: int = 5,
        polar_dtype: Literal["bfloat16", "float32"] = "bfloat16",
        polar_form: Literal["rectangular", "gram", "auto"] = "rectangular",
        muon_lr: float = 0.02,
        adamw_lr: float = 3e-4,
        muon_weight_decay: float = 0.0,
        adamw_weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        adjust_lr: Literal["original", "match_rms_adamw"] = "original",
        per_head: bool = False,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        warmup_steps: int = 0,
        schedule: Literal["paper", "cosine"] = "paper",
        constant_fraction: float = 0.4,
        min_lr_ratio: float = 0.0,
        compile: bool = False,
        compile_backend: str = "inductor",
        peak_flops: float | None = None,
    ) -> None:
        super().__init__()
        if polar_steps < 1:
            raise ValueError(f"polar_steps must be positive, got {polar_steps}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        for name, value in (("muon_lr", muon_lr), ("adamw_lr", adamw_lr)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0.0 <= constant_fraction <= 1.0:
            raise ValueError(f"constant_fraction must be in [0, 1], got {constant_fraction}")
        self.save_hyperparameters()
        self.config = GPTConfig.from_preset(
            preset,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            block_size=context_length,
            vocab_size=vocab_size,
            tie_embeddings=tie_embeddings,
            dropout=dropout,
        )
        self.model = GPT(self.config)
        self.val_loss = MeanMetric()
        # (global_step, token-weighted validation loss) after every validation run, the pre-training
        # sanity check included; the run summary prints its first and last entries.
        self.val_history: list[tuple[int, float]] = []
        self.tokens_seen = 0
        self._last_batch_end: float | None = None
        self._peak_flops: float | None = peak_flops
        self._compiled = False

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            # nn.Module.compile compiles __call__ in place, so state_dict keys keep their names.
            self.model.compile(backend=self.hparams.compile_backend)
            self._compiled = True

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)

    def _loss(self, batch: Tensor) -> tuple[Tensor, int]:
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        logits = self.model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return loss, y.numel()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, n_tokens = self._loss(batch)
        self.tokens_seen += n_tokens * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:
            seconds = now - self._last_batch_end
            tokens = (batch.size(1) - 1) * batch.size(0) * self.trainer.world_size
            tokens_per_sec = tokens / seconds
            self.log("train/tokens_per_sec", tokens_per_sec, prog_bar=True)
            if self._peak_flops is not None:
                flops = self.model.flops_per_token(batch.size(1) - 1) * tokens_per_sec
                self.log("train/mfu", flops / (self._peak_flops * self.trainer.world_size))
        self._last_batch_end = now

    def on_train_start(self) -> None:
        self._last_batch_end = None
        if self.hparams.peak_flops is None:
            self._peak_flops = peak_bf16_flops(self.device)

    def on_validation_end(self) -> None:
        # The interval spanning a validation run is not a training step's time.
        self._last_batch_end = None

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        loss, n_tokens = self._loss(batch)
        self.val_loss.update(loss.detach(), weight=n_tokens)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()  # token-weighted mean over every rank's batches
        self.val_loss.reset()
        self.val_history.append((self.global_step, float(loss)))
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total_steps = self.trainer.max_steps
        if total_steps is None or total_steps <= 0:
            # The schedule's length is trainer.max_steps: estimated_stepping_batches would iterate the
            # dataloader here and break restoring a stateful stream (lightning #20550).
            raise ValueError(f"GPT2Module needs trainer.max_steps > 0 for its schedule, got {total_steps}")
        if hp.warmup_steps > total_steps:
            raise ValueError(f"warmup_steps={hp.warmup_steps} exceeds trainer.max_steps={total_steps}")
        rules = []
        if hp.per_head and hp.optimizer == "muon":
            # The fused c_attn weight (3d, d) stacks Q, K, V along rows, each head a band of head_dim
            # rows: cut it into 3 * n_head blocks, each orthogonalised on its own (paper's per-head
            # ablation). MuonAdamW only cuts rows, so c_proj (heads along columns) stays whole.
            d = self.config.n_embd
            rules.append(ParamRule(
                r"attn\.c_attn\.weight$", "muon_qkv_heads", algorithm="muon",
                options={"split_sizes": (d, d, d), "num_heads": self.config.n_head},
            ))
        groups = muon_param_groups(
            self.model,
            muon_lr=hp.muon_lr,
            adamw_lr=hp.adamw_lr,
            muon_weight_decay=hp.muon_weight_decay,
            adamw_weight_decay=hp.adamw_weight_decay,
            matrix_algorithm=hp.optimizer,
            rules=rules or None,
        )
        optimizer = MuonAdamW(
            groups,
            lr=hp.muon_lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov,
            method=hp.polar_method,
            steps=None if hp.polar_method == "svd" else hp.polar_steps,  # SVD is exact: no steps
            polar_dtype=hp.polar_dtype,
            form=hp.polar_form,
            adjust_lr=hp.adjust_lr,
            betas=tuple(hp.adamw_betas),
            eps=hp.adamw_eps,
        )
        if hp.schedule == "paper":
            lr_lambda = warmup_constant_decay(hp.warmup_steps, total_steps, hp.constant_fraction)
        else:
            lr_lambda = warmup_cosine(hp.warmup_steps, total_steps, hp.min_lr_ratio)
        scheduler = LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["val_history"] = list(self.val_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self.val_history = [tuple(v) for v in checkpoint.get("val_history", [])]
