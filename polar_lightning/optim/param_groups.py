"""Route a model's parameters to Muon or AdamW param groups for MuonAdamW.

Muon is for hidden weight matrices; embeddings, the output head, norm gains, biases and scalars go to
AdamW (Jordan et al. 2024, and the Polar Express paper's GPT-2 setup: "Muon on hidden matrices, AdamW
on embeddings, unembedding and positional embeddings"). Built-in groups:

- ``muon``: parameters with >= 2 dimensions that are neither embeddings nor the output head;
- ``adamw``: the output head's matrix (and, with ``matrix_algorithm="adamw"``, the hidden matrices),
  with ``adamw_weight_decay``;
- ``adamw_no_decay``: embeddings, gains, biases and scalars, weight decay 0.

User rules come first, in order, and the first match wins.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polar_lightning.optim.distributed import refuse_fsdp1_module

log = logging.getLogger(__name__)

BUILTIN_GROUPS = ("muon", "adamw", "adamw_no_decay")
# Module names taken as the output head when output_head="auto" (GPT-2's lm_head, common classifier names).
HEAD_NAMES = ("lm_head", "head", "classifier", "output", "fc_out", "unembed", "unembedding")


@dataclass(frozen=True)
class ParamRule:
    """Parameters whose name matches ``pattern`` (``re.search``) go to group ``group``.

    ``group`` is a built-in group ("muon", "adamw", "adamw_no_decay") or a new group name; a new group
    needs ``algorithm`` and may set ``lr``, ``weight_decay`` and further MuonAdamW group ``options``
    (e.g. ``{"split_sizes": (768, 768, 768), "num_heads": 12}`` for a fused QKV matrix orthogonalised per
    head). A new Muon group starts from ``muon_options``.
    """

    pattern: str
    group: str
    algorithm: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"rule pattern {self.pattern!r} is not a valid regex: {err}") from err
        if self.group not in BUILTIN_GROUPS and self.algorithm not in ("muon", "adamw"):
            raise ValueError(
                f"rule for new group {self.group!r} needs algorithm 'muon' or 'adamw', got {self.algorithm!r}"
            )
        if self.group in BUILTIN_GROUPS and (self.algorithm or self.lr is not None or self.options):
            raise ValueError(
                f"rule {self.pattern!r} -> built-in group {self.group!r} cannot change its settings"
            )


def _as_rule(rule: ParamRule | tuple[str, str]) -> ParamRule:
    if isinstance(rule, ParamRule):
        return rule
    if isinstance(rule, tuple | list) and len(rule) == 2 and all(isinstance(x, str) for x in rule):
        return ParamRule(rule[0], rule[1])
    raise ValueError(f"a rule is a ParamRule or a (pattern, group) pair of strings, got {rule!r}")


def _head_module(model: nn.Module, output_head: str | None) -> str | None:
    """Name of the output head module, or None."""
    if output_head is None:
        return None
    names = dict(model.named_modules())
    if output_head != "auto":
        if output_head not in names:
            raise ValueError(f"output_head {output_head!r} is not a module of the model")
        return output_head
    for name in names:
        if name and name.rsplit(".", 1)[-1] in HEAD_NAMES:
            return name
    # Fall back to the last registered leaf with a matrix weight: the output layer of a Sequential MLP/CNN.
    last = None
    for name, module in names.items():
        weight = getattr(module, "weight", None)
        if not list(module.children()) and isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            last = name
    return last


def muon_param_groups(
    model: nn.Module,
    *,
    muon_lr: float = 0.02,
    adamw_lr: float = 3e-4,
    muon_weight_decay: float = 0.0,
    adamw_weight_decay: float = 0.0,
    matrix_algorithm: str = "muon",
    rules: list[ParamRule | tuple[str, str]] | None = None,
    muon_options: dict[str, Any] | None = None,
    output_head: str | None = "auto",
) -> list[dict[str, Any]]:
    """Param groups for MuonAdamW: hidden matrices to Muon, everything else to AdamW.

    Args:
        model: the model; tied parameters appear once, frozen ones not at all.
        muon_lr: lr of the Muon group (Keller Jordan's default 0.02).
        adamw_lr: lr of the AdamW groups (Keller Jordan's auxiliary Adam: 3e-4).
        muon_weight_decay: decoupled weight decay of the Muon group.
        adamw_weight_decay: weight decay of the ``adamw`` group (the head and AdamW matrices); gains,
            biases and embeddings go to ``adamw_no_decay`` with none.
        matrix_algorithm: "muon", or "adamw" to train hidden matrices with AdamW (the AdamW baseline).
        rules: ordered ``ParamRule`` s or (pattern, group) pairs matched against parameter names
            (``re.search``); the first match wins. A rule that matches no parameter is an error.
        muon_options: MuonAdamW settings for Muon groups (method, steps, polar_dtype, adjust_lr,
            split_sizes, num_heads, momentum, nesterov, torch_compatible).
        output_head: module name of the output head, "auto" (a module named like ``lm_head`` /
            ``head`` / ``classifier``, else the last leaf module with a matrix weight), or None.

    Returns:
        Non-empty groups, each a dict with "name", "algorithm", "params", "lr", "weight_decay"
        (+ Muon options); one INFO log line per group.
    """
    if matrix_algorithm not in ("muon", "adamw"):
        raise ValueError(f"matrix_algorithm must be 'muon' or 'adamw', got {matrix_algorithm!r}")
    refuse_fsdp1_module(model)
    rule_list = [_as_rule(r) for r in rules or []]
    options = dict(muon_options or {})
    for reserved in ("params", "algorithm", "name", "lr", "weight_decay"):
        if reserved in options:
            raise ValueError(f"muon_options cannot set {reserved!r}; use the dedicated argument")
    head = _head_module(model, output_head)
    embedding_modules = [m for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]
    embedding_params = {id(p) for m in embedding_modules for p in m.parameters()}
    head_params = {id(p) for p in model.get_submodule(head).parameters()} if head is not None else set()

    groups: dict[str, dict[str, Any]] = {
        "muon": {"name": "muon", "algorithm": matrix_algorithm, "params": []},
        "adamw": {"name": "adamw", "algorithm": "adamw", "params": [], "lr": adamw_lr,
                  "weight_decay": adamw_weight_decay},
        "adamw_no_decay": {"name": "adamw_no_decay", "algorithm": "adamw", "params": [], "lr": adamw_lr,
                           "weight_decay": 0.0},
    }
    if matrix_algorithm == "muon":
        groups["muon"].update(lr=muon_lr, weight_decay=muon_weight_decay, **options)
    else:
        groups["muon"].update(name="adamw_matrices", lr=adamw_lr, weight_decay=adamw_weight_decay)
    for rule in rule_list:
        if rule.group in groups:
            continue
        group = {"name": rule.group, "algorithm": rule.algorithm, "params": []}
        if rule.algorithm == "muon":
            group.update(lr=muon_lr, weight_decay=muon_weight_decay, **options)
        else:
            group.update(lr=adamw_lr, weight_decay=adamw_weight_decay)
        if rule.lr is not None:
            group["lr"] = rule.lr
        if rule.weight_decay is not None:
            group["weight_decay"] = rule.weight_decay
        group.update(rule.options)
        groups[rule.group] = group

    matched = [0] * len(rule_list)
    placed: dict[int, str] = {}
    names: dict[str, list[str]] = {key: [] for key in groups}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, p in trainable:
        if id(p) in placed:
            raise ValueError(f"parameter {name!r} would land in two groups ({placed[id(p)]!r} already)")
        target = None
        for i, rule in enumerate(rule_list):
            if re.search(rule.pattern, name):
                matched[i] += 1
                target = rule.group
                break
        if target is None:
            if id(p) in embedding_params or p.ndim < 2:
                target = "adamw_no_decay"
            elif id(p) in head_params:
                target = "adamw"
            else:
                target = "muon"
        groups[target]["params"].append(p)
        names[target].append(name)
        placed[id(p)] = target
    for rule, count in zip(rule_list, matched, strict=True):
        if count == 0:
            raise ValueError(f"rule {rule.pattern!r} -> {rule.group!r} matches no trainable parameter")
    missing = [n for n, p in trainable if id(p) not in placed]
    if missing:
        raise ValueError(f"trainable parameters in no group: {missing}")

    result = []
    for key, group in groups.items():
        if not group["params"]:
            continue
        shapes = sorted({tuple(p.shape) for p in group["params"]})
        log.info(
            "param group %r (%s): %d tensors, %d elements, lr %g, weight decay %g, shapes %s",
            group["name"], group["algorithm"], len(group["params"]),
            sum(p.numel() for p in group["params"]), group["lr"], group["weight_decay"], shapes,
        )
        log.debug("param group %r holds %s", group["name"], names[key])
        result.append(group)
    return result
