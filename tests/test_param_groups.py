"""muon_param_groups: which parameter goes where, user rules, errors and logging."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from polar_lightning.optim import MuonAdamW, ParamRule, muon_param_groups


class TinyLM(nn.Module):
    """A GPT-shaped toy: embeddings, a block with a fused QKV, norms, an optionally tied head."""

    def __init__(self, tied: bool = True, vocab: int = 11, d: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(4, d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.conv = nn.Conv1d(d, d, 3, bias=False)
        self.ln_f = nn.LayerNorm(d)
        self.scale = nn.Parameter(torch.ones(()))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight


def _by_name(groups):
    return {g["name"]: g for g in groups}


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_default_routing_tied_head():
    model = TinyLM(tied=True)
    groups = _by_name(muon_param_groups(model, adamw_weight_decay=0.1, muon_weight_decay=0.05))
    assert set(groups) == {"muon", "adamw_no_decay"}  # the tied head is the embedding: no decayed group
    assert _names(model, groups["muon"]) == ["c_attn.weight", "c_proj.weight", "conv.weight"]
    assert _names(model, groups["adamw_no_decay"]) == [
        "c_attn.bias", "c_proj.bias", "ln_f.bias", "ln_f.weight", "scale", "wpe.weight", "wte.weight",
    ]
    assert groups["adamw_no_decay"]["weight_decay"] == 0.0
    assert groups["muon"]["weight_decay"] == 0.05 and groups["muon"]["algorithm"] == "muon"
    # Tied parameters appear once over all groups.
    all_ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == len(list(model.parameters()))


def test_untied_head_goes_to_decayed_adamw_group():
    model = TinyLM(tied=False)
    groups = _by_name(muon_param_groups(model, adamw_lr=1e-3, adamw_weight_decay=0.1))
    assert _names(model, groups["adamw"]) == ["lm_head.weight"]
    assert groups["adamw"]["weight_decay"] == 0.1 and groups["adamw"]["lr"] == 1e-3
    assert "lm_head.weight" not in _names(model, groups["muon"])


def test_head_fallback_is_the_last_matrix_layer_of_a_sequential():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    groups = _by_name(muon_param_groups(model))
    assert _names(model, groups["adamw"]) == ["4.weight"]
    assert _names(model, groups["muon"]) == ["0.weight", "2.weight"]


def test_frozen_parameters_are_left_out():
    model = TinyLM()
    model.c_proj.weight.requires_grad_(False)
    groups = muon_param_groups(model)
    assert all(p is not model.c_proj.weight for g in groups for p in g["params"])


def test_user_rules_first_match_wins_and_new_groups_carry_options():
    model = TinyLM()
    rules = [
        ParamRule(r"c_attn\.weight$", "qkv_heads", algorithm="muon", lr=0.01,
                  options={"split_sizes": (8, 8, 8), "num_heads": 2}),
        ("c_attn", "adamw"),  # would also match c_attn.weight, but the rule above comes first
        (r"^conv\.", "adamw_no_decay"),
    ]
    groups = _by_name(muon_param_groups(model, rules=rules, muon_options={"method": "jordan", "steps": 4}))
    qkv = groups["qkv_heads"]
    assert _names(model, qkv) == ["c_attn.weight"]
    assert qkv["lr"] == 0.01 and qkv["split_sizes"] == (8, 8, 8) and qkv["num_heads"] == 2
    assert qkv["method"] == "jordan" and qkv["steps"] == 4
    assert _names(model, groups["adamw"]) == ["c_attn.bias"]
    assert "conv.weight" in _names(model, groups["adamw_no_decay"])
    assert groups["muon"]["method"] == "jordan"
    MuonAdamW(list(groups.values()))  # the groups are valid optimizer input


def test_rule_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="nothing_here"):
        muon_param_groups(TinyLM(), rules=[("nothing_here", "adamw")])


def test_bad_rules_and_arguments_raise():
    with pytest.raises(ValueError, match="algorithm"):
        muon_param_groups(TinyLM(), rules=[ParamRule("c_proj", "custom")])
    with pytest.raises(ValueError, match="pattern"):
        muon_param_groups(TinyLM(), rules=[ParamRule("(", "adamw")])
    with pytest.raises(ValueError, match="matrix_algorithm"):
        muon_param_groups(TinyLM(), matrix_algorithm="sgd")
    with pytest.raises(ValueError, match="lr"):
        muon_param_groups(TinyLM(), muon_options={"lr": 1.0})
    with pytest.raises(ValueError, match="output_head"):
        muon_param_groups(TinyLM(), output_head="decoder")


def test_matrix_algorithm_adamw_is_the_adamw_baseline():
    model = TinyLM(tied=False)
    groups = _by_name(muon_param_groups(model, matrix_algorithm="adamw", adamw_weight_decay=0.1))
    assert all(g["algorithm"] == "adamw" for g in groups.values())
    assert _names(model, groups["adamw_matrices"]) == ["c_attn.weight", "c_proj.weight", "conv.weight"]


def test_one_log_line_per_group(caplog):
    with caplog.at_level(logging.INFO, logger="polar_lightning.optim.param_groups"):
        groups = muon_param_groups(TinyLM(tied=False), muon_lr=0.02)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == len(groups) == 3
    muon_line = next(line for line in lines if "'muon'" in line)
    assert "3 tensors" in muon_line and "lr 0.02" in muon_line and "(24, 8)" in muon_line


def test_every_group_is_named_and_trains():
    model = TinyLM()
    opt = MuonAdamW(muon_param_groups(model))
    assert all("name" in g for g in opt.param_groups)
    x = torch.randint(0, 11, (2, 4))
    h = model.wte(x) + model.wpe.weight
    h = model.c_proj(model.c_attn(h)[..., :8]) + model.conv(torch.nn.functional.pad(h.mT, (1, 1))).mT
    loss = model.lm_head(model.ln_f(h) * model.scale).logsumexp(-1).mean()
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
