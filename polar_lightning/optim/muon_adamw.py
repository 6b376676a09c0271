"""MuonAdamW: Muon with a choice of polar iteration on matrices, AdamW on the rest, in one optimizer.

The update math lives in small pure functions (``muon_momentum``, ``matrix_blocks``, ``shape_factor``,
``adamw_update_``); the class only validates groups, keeps state and schedules the batched work.
Lightning's automatic optimisation takes one optimizer, so the hybrid is one torch.optim.Optimizer whose
param groups each name their algorithm (../shared/reference/lightning-notes.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from polar_lightning.optim import distributed as D
from polar_lightning.polar import FORMS, METHOD_NAMES, orthogonalize, polar_method

ALGORITHMS = ("muon", "adamw")
ADJUST_LR = ("original", "match_rms_adamw", "spectral", None)
POLAR_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float64,
}


# ----------------------------------------------------------------------------------------------------
# Pure update math
# ----------------------------------------------------------------------------------------------------


def muon_momentum(grads: list[Tensor], bufs: list[Tensor], momentum: float, nesterov: bool) -> list[Tensor]:
    """Update the momentum buffers in place and return the polar inputs.

    B <- B + (1 - mu) (G - B)  (Keller Jordan's lerp form of B <- mu B + (1 - mu) G);
    input = G + mu (B - G) with Nesterov, else B. Same ops as torch.optim.Muon, so bitwise equal.
    """
    if not grads:
        return []
    torch._foreach_lerp_(bufs, grads, 1.0 - momentum)
    if nesterov:
        return list(torch._foreach_lerp(grads, bufs, momentum))
    return list(bufs)


def shape_factor(rows: int, cols: int, adjust_lr: str | None) -> float:
    """The lr multiplier for an orthogonalised (rows, cols) block.

    "original" sqrt(max(1, rows/cols)) (Jordan et al. 2024; torch.optim.Muon's default),
    "match_rms_adamw" 0.2 sqrt(max(rows, cols)) (Liu et al. 2025, "Muon is Scalable for LLM Training",
    arXiv 2502.16982: update RMS ~0.2 like AdamW's), "spectral" sqrt(rows/cols) (Bernstein & Newhouse
    spectral scaling, RMS->RMS operator norm 1), None: 1.
    """
    if adjust_lr == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr == "spectral":
        return math.sqrt(rows / cols)
    if adjust_lr is None:
        return 1.0
    raise ValueError(f"adjust_lr must be one of {ADJUST_LR}, got {adjust_lr!r}")


def matrix_blocks(
    rows: int, split_sizes: Sequence[int] | None, num_heads: int | Sequence[int] | None
) -> list[tuple[int, int, int]]:
    """How a (rows, cols) matrix is cut for orthogonalisation: [(first_row, block_rows, n_blocks)].

    ``split_sizes`` cuts dim 0 into consecutive pieces (a fused QKV weight: (d, d, d)); ``num_heads``
    (one int for every piece, or one per piece) cuts each piece into equal heads along dim 0.
    """
    sizes = [rows] if split_sizes is None else list(split_sizes)
    if sum(sizes) != rows:
        raise ValueError(f"split_sizes {tuple(sizes)} sum to {sum(sizes)}, but the matrix has {rows} rows")
    if num_heads is None:
        heads = [1] * len(sizes)
    elif isinstance(num_heads, int):
        heads = [num_heads] * len(sizes)
    else:
        heads = list(num_heads)
        if len(heads) != len(sizes):
            raise ValueError(f"num_heads {tuple(heads)} needs one entry per split {tuple(sizes)}")
    blocks, start = [], 0
    for size, h in zip(sizes, heads, strict=True):
        if h < 1 or size % h:
            raise ValueError(f"num_heads={h} does not divide a split of {size} rows")
        blocks.append((start, size // h, h))
        start += size
    return blocks


def adamw_update_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One AdamW step (Loshchilov & Hutter 2019, decoupled weight decay) on lists of tensors, in place.

    p <- p (1 - lr wd);  m <- lerp(m, g, 1 - b1);  v <- b2 v + (1 - b2) g^2;
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), with t the step already counted.
    The op order is torch.optim.AdamW's, with torch._foreach kernels for speed.
    """
    if not params:
        return
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1.0 - beta2**t) for t in steps])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / (1.0 - beta1**t) for t in steps])


# ----------------------------------------------------------------------------------------------------
# Group validation
# ----------------------------------------------------------------------------------------------------


def _check_float(name: str, value: Any, low: float = 0.0, high: float = math.inf, *, open_high: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {value!r}")
    if value < low or value > high or (open_high and value == high):
        bound = f"[{low}, {high})" if open_high else f"[{low}, {high}]"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return float(value)


def _normalise_method(method: Any) -> str | tuple[tuple[float, ...], ...]:
    """A method name, or a coefficient list turned into a tuple of tuples (plain, hashable)."""
    if isinstance(method, str):
        if method not in METHOD_NAMES:
            raise ValueError(
                f"method must be one of {list(METHOD_NAMES)} or a coefficient list, got {method!r}"
            )
        return method
    try:
        spec = polar_method(method)
    except TypeError as err:
        raise ValueError(f"method must be a name or a list of coefficient tuples, got {method!r}") from err
    return spec.coefficients


def _validate_group(group: dict[str, Any]) -> None:
    """Check and normalise one group's hyperparameters in place (ValueError names the bad value)."""
    name = group.get("name", "<unnamed>")
    where = f"param group {name!r}"
    algorithm = group["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{where}: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if isinstance(group["lr"], Tensor):
        raise ValueError(f"{where}: lr must be a Python float (plain state for weights_only), got a Tensor")
    group["lr"] = _check_float(f"{where}: lr", group["lr"])
    group["weight_decay"] = _check_float(f"{where}: weight_decay", group["weight_decay"])
    D.refuse_flat_shards(group["params"])  # an FSDP1 shard must not reach AdamW silently either
    if algorithm == "adamw":
        betas = group["betas"]
        if not isinstance(betas, Sequence) or len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair of floats, got {betas!r}")
        group["betas"] = tuple(_check_float(f"{where}: betas", b, 0.0, 1.0, open_high=True) for b in betas)
        group["eps"] = _check_float(f"{where}: eps", group["eps"])
        return
    group["momentum"] = _check_float(f"{where}: momentum", group["momentum"], 0.0, 1.0, open_high=True)
    for key in ("nesterov", "torch_compatible"):
        if not isinstance(group[key], bool):
            raise ValueError(f"{where}: {key} must be a bool, got {group[key]!r}")
    if group["form"] not in FORMS:
        raise ValueError(f"{where}: form must be one of {FORMS}, got {group['form']!r}")
    if group["form"] == "gram" and group["torch_compatible"]:
        raise ValueError(f"{where}: form='gram' and torch_compatible=True exclude each other")
    group["method"] = _normalise_method(group["method"])
    steps = group["steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"{where}: steps must be a positive int or None, got {steps!r}")
    if group["method"] == "svd" and steps is not None:
        raise ValueError(f"{where}: method 'svd' is exact and takes no steps, got steps={steps!r}")
    if group["polar_dtype"] not in POLAR_DTYPES:
        raise ValueError(
            f"{where}: polar_dtype must be one of {list(POLAR_DTYPES)}, got {group['polar_dtype']!r}"
        )
    if group["adjust_lr"] not in ADJUST_LR:
        raise ValueError(f"{where}: adjust_lr must be one of {ADJUST_LR}, got {group['adjust_lr']!r}")
    split_sizes, num_heads = group["split_sizes"], group["num_heads"]
    if split_sizes is not None:
        if isinstance(split_sizes, int) or not all(isinstance(s, int) and s > 0 for s in split_sizes):
            raise ValueError(f"{where}: split_sizes must be a sequence of positive ints, got {split_sizes!r}")
        group["split_sizes"] = tuple(split_sizes)
    if num_heads is not None and not isinstance(num_heads, int):
        if not all(isinstance(h, int) and h > 0 for h in num_heads):
            raise ValueError(f"{where}: num_heads must be a positive int or one per split, got {num_heads!r}")
        group["num_heads"] = tuple(num_heads)
    elif isinstance(num_heads, int) and (isinstance(num_heads, bool) or num_heads < 1):
        raise ValueError(f"{where}: num_heads must be a positive int, got {num_heads!r}")
    for p in group["params"]:
        if p.ndim < 2:
            raise ValueError(
                f"{where}: Muon needs parameters with >= 2 dimensions, got shape {tuple(p.shape)}; "
                "route it to an 'adamw' group (muon_param_groups does this)"
            )
        if torch.is_complex(p):
            raise ValueError(f"{where}: complex parameters are not supported")
        matrix_blocks(p.shape[0], group["split_sizes"], group["num_heads"])  # raises on a bad split


# ----------------------------------------------------------------------------------------------------
# The optimizer
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """One split of one Muon parameter: n_blocks blocks of (rows, cols), rows first_row.. of the matrix."""

    param: Tensor
    group: dict[str, Any]
    first_row: int
    rows: int
    cols: int
    n_blocks: int
    blocks_in: Tensor  # (n_blocks, rows, cols), the polar input (cast to polar_dtype when stacked)
    blocks_out: Tensor | None = None
    record_in: Tensor | None = field(default=None, repr=False)


class MuonAdamW(Optimizer):
    r"""Muon (any polar iteration) on matrix parameters and AdamW on the rest, as one optimizer.

    Each param group names its ``algorithm``. For a Muon group with parameter W (viewed as a
    (rows, cols) matrix, conv weights as (out, -1)), gradient G, momentum buffer B, step t:

    .. code-block:: text

        B_t   = mu B_{t-1} + (1 - mu) G_t                         (lerp form, Jordan et al. 2024)
        U_t   = (1 - mu) G_t + mu B_t  if nesterov  else  B_t
        O_t   = polar(U_t)   for each block of U_t                (split_sizes / num_heads cut dim 0)
              ~ U V^T of each block via `method` for `steps` iterations in `polar_dtype`
        W_t   = W_{t-1} (1 - lr wd)                               (decoupled weight decay, unadjusted lr)
        W_t   = W_t - lr * s(rows_b, cols_b) * O_t                (s: the `adjust_lr` shape factor)

    and for an AdamW group the usual (Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
    ICLR 2019), see :func:`adamw_update_`. The polar step ``polar(U)`` approximates the orthogonal
    factor with odd matrix polynomials: Keller Jordan's quintic (Jordan et al. 2024, "Muon: An optimizer
    for hidden layers in neural networks", kellerjordan.github.io/posts/muon) or Polar Express (Amsel,
    Persson, Musco, Gower 2025, arXiv 2505.16932), which picks the minimax-optimal polynomial per step.

    Same-shape blocks from all Muon parameters are stacked and orthogonalised in one batched call
    (on accelerators and across ranks; see ``batch``). Under torch.distributed each rank
    orthogonalises a slice of every stack and an all-gather shares the results (see
    :mod:`polar_lightning.optim.distributed`); every rank keeps every momentum buffer.

    Defaults and their sources: lr 0.02, momentum 0.95, Nesterov, weight decay 0 (Keller Jordan's Muon);
    method "polar_express" with 5 steps in bfloat16 (the paper's GPT-2 runs); adjust_lr "original"
    (the paper's runs and torch.optim.Muon's default); AdamW lr 3e-4, betas (0.9, 0.95), eps 1e-10
    (the auxiliary Adam of Keller Jordan's Muon).

    Args:
        params: parameters or param groups; a group may set any hyperparameter below plus ``algorithm``
            ("muon" or "adamw") and ``name``. :func:`polar_lightning.optim.muon_param_groups` builds them.
        lr: learning rate of Muon groups without their own "lr".
        weight_decay: decoupled weight decay, p <- p (1 - lr wd) (unadjusted lr, as torch.optim.Muon).
        algorithm: algorithm of groups without an "algorithm" key.
        momentum: Muon momentum mu in [0, 1).
        nesterov: use the Nesterov-style polar input.
        method: polar method name (``polar_lightning.polar.METHOD_NAMES``) or a list of per-step
            odd-power coefficient tuples.
        steps: polar iterations (None: the method's default, 5 for every named method).
        polar_dtype: dtype name the polar iteration runs in ("bfloat16", "float16", "float32", "float64").
        adjust_lr: "original" sqrt(max(1, r/c)), "match_rms_adamw" 0.2 sqrt(max(r, c)),
            "spectral" sqrt(r/c), or None; (r, c) is the shape of one orthogonalised block.
        split_sizes: sizes along dim 0 that are orthogonalised separately (a fused QKV: (d, d, d)).
        num_heads: orthogonalise each split per head (heads along dim 0); int or one per split.
        torch_compatible: normalise as torch.optim.Muon does and orthogonalise each matrix on its own,
            so method "jordan" reproduces torch.optim.Muon bitwise (slower: no batching).
        form: how the polar steps are multiplied out: "rectangular" (default, the more accurate in
            bf16), "gram" (iterate on X X^T), or "auto" (Gram for wide blocks such as GPT-2's MLP
            matrices, rectangular for square ones); see :mod:`polar_lightning.polar.iterations`.
        adamw_lr: learning rate of AdamW groups without their own "lr".
        betas: AdamW (beta1, beta2).
        eps: AdamW epsilon.
        distributed: split the polar work over torch.distributed ranks when a process group exists.
            Set False when ranks train different models.
        batch: stack same-shape blocks into one batched polar call. ``None`` (default): on
            accelerators (fewer kernel launches), not in a single CPU process, where the stack only
            adds a copy of every block (recipes/optim_step). Always on when ranks split the work.

    Attributes:
        record_polar_updates: while True, every step stores ``polar_updates``.
        polar_updates: dict Parameter -> (input, output) of its polar step, float32, shape
            (blocks, r, c), before lr, shape factor and weight decay (blocks of unequal shape are
            zero-padded to the largest). Empty after a step taken with recording off.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        weight_decay: float = 0.0,
        *,
        algorithm: str = "muon",
        momentum: float = 0.95,
        nesterov: bool = True,
        method: str | Sequence[Sequence[float]] = "polar_express",
        steps: int | None = None,
        polar_dtype: str = "bfloat16",
        adjust_lr: str | None = "original",
        split_sizes: Sequence[int] | None = None,
        num_heads: int | Sequence[int] | None = None,
        torch_compatible: bool = False,
        form: str = "rectangular",
        adamw_lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-10,
        distributed: bool = True,
        batch: bool | None = None,
    ) -> None:
        self._adamw_lr = _check_float("adamw_lr", adamw_lr)
        self.distributed = bool(distributed)
        if batch is not None and not isinstance(batch, bool):
            raise ValueError(f"batch must be True, False or None, got {batch!r}")
        self.batch = batch
        self.record_polar_updates = False
        self.polar_updates: dict[Tensor, tuple[Tensor, Tensor]] = {}
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "algorithm": algorithm,
            "momentum": momentum,
            "nesterov": nesterov,
            "method": method,
            "steps": steps,
            "polar_dtype": polar_dtype,
            "adjust_lr": adjust_lr,
            "split_sizes": split_sizes,
            "num_heads": num_heads,
            "torch_compatible": torch_compatible,
            "form": form,
            "betas": tuple(betas),
            "eps": eps,
        }
        # Validate the defaults once, as if they were a Muon and an AdamW group, so a bad constructor
        # argument is reported even when every group overrides it.
        for algo in ALGORITHMS:
            _validate_group({**defaults, "algorithm": algo, "params": [], "name": "defaults"})
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; an AdamW group without its own lr takes ``adamw_lr``. Validates the group."""
        algorithm = param_group.get("algorithm", self.defaults["algorithm"])
        if algorithm == "adamw" and "lr" not in param_group:
            param_group = {**param_group, "lr": self._adamw_lr}
        super().add_param_group(param_group)
        try:
            _validate_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # a rejected group must not stay half-added
            raise

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every group; ``closure`` (re-evaluates the loss) runs under enable_grad."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        record = bool(self.record_polar_updates)
        self.polar_updates = {}
        muon_groups = []
        for group in self.param_groups:
            if group["algorithm"] == "adamw":
                self._adamw_group(group)
            else:
                muon_groups.append(group)
        if muon_groups:
            self._muon_groups(muon_groups, record)
        return loss

    def _adamw_group(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("MuonAdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                # Step on the CPU as torch.optim.AdamW does: reading it never syncs an accelerator.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(D.local(p))
            grads.append(D.local(p.grad))
            exp_avgs.append(D.local(state["exp_avg"]))
            exp_avg_sqs.append(D.local(state["exp_avg_sq"]))
            steps.append(float(state["step"]))
        beta1, beta2 = group["betas"]
        adamw_update_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
        )

    def _muon_groups(self, groups: list[dict[str, Any]], record: bool) -> None:
        pieces: list[_Piece] = []
        for group in groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("MuonAdamW does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            grads = [D.local(p.grad) for p in params]
            bufs = [D.local(self.state[p]["momentum_buffer"]) for p in params]
            inputs = muon_momentum(grads, bufs, group["momentum"], group["nesterov"])
            work = POLAR_DTYPES[group["polar_dtype"]]
            for p, u_local in zip(params, inputs, strict=True):
                u = D.full_from_local(u_local, p)  # whole polar input, p's shape
                matrix = u.reshape(u.shape[0], -1)  # (rows, cols): conv weights as (out, -1)
                cuts = matrix_blocks(matrix.shape[0], group["split_sizes"], group["num_heads"])
                for first, rows, n in cuts:
                    blocks = matrix[first : first + rows * n].reshape(n, rows, matrix.shape[1])  # (n, r, c)
                    piece = _Piece(p, group, first, rows, matrix.shape[1], n, blocks)
                    if record:
                        piece.record_in = blocks.float().clone()
                    if not group["torch_compatible"] and group["method"] != "svd" and self._stacks(p):
                        # The iteration casts to polar_dtype first; casting here halves the stacking traffic.
                        piece.blocks_in = blocks.to(work)
                    pieces.append(piece)
        self._orthogonalise(pieces)
        self._apply(pieces, record)

    def _stacks(self, param: Tensor) -> bool:
        """Whether blocks on param's device go through one stacked call (see ``batch``)."""
        if D.world(self.distributed)[1] > 1:
            return True  # the stack is what the ranks split
        return self.batch if self.batch is not None else param.device.type != "cpu"

    def _orthogonalise(self, pieces: list[_Piece]) -> None:
        """Fill blocks_out, stacking blocks that share (method, steps, dtype, shape) into one call."""
        buckets: dict[tuple, list[_Piece]] = {}
        for piece in pieces:
            g = piece.group
            tall = piece.rows > piece.cols and not g["torch_compatible"]
            # A tall block is orthogonalised as its transpose (polar(G^T) = polar(G)^T): c_fc (3072, 768)
            # and mlp.c_proj (768, 3072) then share one stack.
            shape = (piece.cols, piece.rows) if tall else (piece.rows, piece.cols)
            device = piece.param.device
            form = g.get("form", "rectangular")  # a checkpoint from before "form" existed lacks the key
            key = (g["method"], g["steps"], g["polar_dtype"], g["torch_compatible"], form, shape, device)
            buckets.setdefault(key, []).append(piece)
        for (method, steps, dtype_name, compatible, form, _, _), bucket in buckets.items():
            polar = functools.partial(
                _polar,
                method=list(method) if isinstance(method, tuple) else method,
                steps=steps,
                dtype=POLAR_DTYPES[dtype_name],
                torch_compatible=compatible,
                form=form,
            )

            parts = []
            for piece in bucket:
                tall = piece.rows > piece.cols and not compatible
                parts.append(piece.blocks_in.mT if tall else piece.blocks_in)  # (n, m, n')
            if self._stacks(bucket[0].param):
                # One batched call per stack: fewer kernel launches on an accelerator, and the stack
                # is what the ranks split between them.
                stack = torch.cat(parts) if len(parts) > 1 else parts[0]  # (K, m, n')
                outs = D.split_map(stack, polar, self.distributed).split([p.n_blocks for p in bucket])
            else:
                # One process on a CPU: no launch cost to save, and the stack would only add a copy of
                # every block (GPT-2 small, torch.profiler: 0.45 s of a 4.3 s step in copies, against
                # 0.08 s in torch.optim.Muon).
                # A single block goes in as a matrix: batched products on transposed views copy them.
                outs = [polar(part[0])[None] if part.shape[0] == 1 else polar(part) for part in parts]
            for piece, block in zip(bucket, outs, strict=True):
                tall = piece.rows > piece.cols and not compatible
                piece.blocks_out = block.mT if tall else block  # (n, rows, cols)

    def _apply(self, pieces: list[_Piece], record: bool) -> None:
        """Weight decay, then W -= lr * factor * O, per parameter (torch.optim.Muon's order of ops)."""
        by_param: dict[int, list[_Piece]] = {}
        for piece in pieces:
            by_param.setdefault(id(piece.param), []).append(piece)
        for plist in by_param.values():
            p, g = plist[0].param, plist[0].group
            if g["weight_decay"] != 0.0:
                D.local(p).mul_(1.0 - g["lr"] * g["weight_decay"])
            outs = [pc.blocks_out.reshape(-1, pc.cols) for pc in plist]
            out = torch.cat(outs) if len(outs) > 1 else outs[0]  # (rows, cols)
            factors = [shape_factor(pc.rows, pc.cols, g["adjust_lr"]) for pc in plist]
            alpha = -g["lr"] * factors[0]
            if any(f != factors[0] for f in factors):
                # Splits with different block shapes: scale their rows, then step with the bare lr.
                out = out.float()
                for pc, f in zip(plist, factors, strict=True):
                    out[pc.first_row : pc.first_row + pc.rows * pc.n_blocks] *= f
                alpha = -g["lr"]
            D.local(p).add_(D.local_from_full(out.reshape(p.shape), p), alpha=alpha)
            if record:
                self.polar_updates[p] = _record(plist)


def _polar(
    x: Tensor,
    *,
    method: str | list,
    steps: int | None,
    dtype: torch.dtype,
    torch_compatible: bool,
    form: str,
) -> Tensor:
    """Orthogonalise a matrix (m, n) or a stack (k, m, n); torch-compatible mode goes matrix by matrix.

    The result stays in the polar dtype (no cast back): ``param.add_`` converts as it adds.
    """
    if torch_compatible and x.ndim == 3:
        out = [orthogonalize(m, method, steps, dtype, check_finite=False, torch_compatible=True) for m in x]
        return torch.stack(out) if out else x
    return orthogonalize(
        x, method, steps, dtype, check_finite=False, torch_compatible=torch_compatible, form=form,
        out_dtype=None if method == "svd" else dtype,
    )


def _record(plist: list[_Piece]) -> tuple[Tensor, Tensor]:
    """(input, output) blocks of one parameter, float32 (blocks, r, c), zero-padded to a common shape."""
    rows = max(pc.rows for pc in plist)
    ins, outs = [], []
    for pc in plist:
        pad = rows - pc.rows
        ins.append(torch.nn.functional.pad(pc.record_in, (0, 0, 0, pad)))
        outs.append(torch.nn.functional.pad(pc.blocks_out.float(), (0, 0, 0, pad)))
    return torch.cat(ins), torch.cat(outs)
