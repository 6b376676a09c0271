"""Distributed plumbing for MuonAdamW: split the polar work over ranks, handle FSDP2 DTensors.

Data parallel (DDP): every rank holds every parameter and, after DDP's all-reduce, the same gradient.
Every rank therefore updates every momentum buffer itself (a cheap elementwise op), so rank 0's
``state_dict`` holds all of them: Lightning saves rank 0's optimizer state only
(../shared/reference/lightning-notes.md). Only the expensive part, the polar iteration, is split:
a stack of K same-shape matrices is padded to a multiple of the world size, each rank orthogonalises
its contiguous slice, and one all-gather hands every rank the whole result. The update applied
afterwards is then the same tensor on every rank, so the parameters stay bitwise identical.
At world size 1 the same code runs with a slice that is the whole stack and no collective.

FSDP2 (Lightning's ModelParallelStrategy, ``fully_shard``): parameters, gradients and optimizer state
are DTensors sharded on dim 0. The optimizer works on the local shards; for a Muon matrix it gathers the
whole polar input (``full_tensor``), splits the orthogonalisation over ranks as above, and keeps only its
own rows of the result (``distribute_tensor(..., src_data_rank=None)`` slices locally without
communication). Momentum and AdamW moments stay sharded DTensors, so the strategy checkpoints them.

FSDP1 (``FSDPStrategy``) hands the optimizer flattened 1-D shards in which a matrix no longer exists:
``refuse_flat_shards`` turns that into an error that names the strategy to use instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

try:  # DTensor lives in torch.distributed.tensor since torch 2.4; absent in builds without distributed.
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch built without distributed support
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]

FSDP1_MESSAGE = (
    "MuonAdamW got a flattened FSDP1 parameter (FSDPStrategy / FullyShardedDataParallel): Muon needs whole "
    "matrices. Use Lightning's ModelParallelStrategy with torch.distributed.fsdp.fully_shard in "
    "configure_model (FSDP2, DTensor parameters sharded on dim 0), or DDP."
)


def world(enabled: bool = True) -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside torch.distributed."""
    if enabled and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_dtensor(t: Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The tensor this rank stores: a DTensor's local shard (aliasing it), any other tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def full_from_local(local_tensor: Tensor, like: Tensor) -> Tensor:
    """The whole tensor whose local shard is ``local_tensor``, sharded as the DTensor ``like``."""
    if not is_dtensor(like):
        return local_tensor
    sharded = DTensor.from_local(
        local_tensor, like.device_mesh, like.placements, run_check=False, shape=like.shape,
        stride=like.stride(),
    )
    return sharded.full_tensor()


def local_from_full(full: Tensor, like: Tensor) -> Tensor:
    """This rank's shard of ``full`` under ``like``'s placements (a local slice, no communication)."""
    if not is_dtensor(like):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def refuse_flat_shards(params: Iterable[Tensor]) -> None:
    """Raise ValueError if any parameter is an FSDP1 flat parameter or a view into one."""
    for p in params:
        flat = type(p).__name__ == "FlatParameter" or getattr(p, "_fsdp_flattened", False)
        if flat or (getattr(p, "_is_sharded", False) and p.ndim == 1):
            raise ValueError(f"{FSDP1_MESSAGE} (parameter of shape {tuple(p.shape)})")


def refuse_fsdp1_module(model: torch.nn.Module) -> None:
    """Raise ValueError if ``model`` contains an FSDP1 FullyShardedDataParallel wrapper."""
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ValueError(FSDP1_MESSAGE)


def split_map(stack: Tensor, fn: Callable[[Tensor], Tensor], enabled: bool = True) -> Tensor:
    """fn applied to every matrix of ``stack`` (K, m, n), each rank computing a contiguous slice.

    ``fn`` maps (k, m, n) -> (k, m', n') matrix by matrix and sends zero matrices to zero matrices
    (true of every polar iteration), so the zero padding that evens out the slices is harmless.
    Every rank must call this with stacks of the same shapes in the same order.
    """
    rank, size = world(enabled)
    if size == 1:
        return fn(stack)
    k = stack.shape[0]
    per_rank = -(-k // size)  # ceil
    pad = per_rank * size - k
    if pad:
        stack = torch.cat([stack, stack.new_zeros(pad, *stack.shape[1:])])  # (per_rank * size, m, n)
    mine = fn(stack[rank * per_rank : (rank + 1) * per_rank]).contiguous()  # (per_rank, m', n')
    pieces = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(pieces, mine)
    return torch.cat(pieces)[:k]  # (K, m', n')
