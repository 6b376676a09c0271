"""MuonAdamW against torch.optim.AdamW / torch.optim.Muon, convergence, checkpoints and options."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polar_lightning.optim import MuonAdamW, matrix_blocks, shape_factor, warmup_constant_decay
from polar_lightning.optim import muon_adamw as muon_adamw_module
from polar_lightning.polar import orthogonalize

SHAPES = [(12, 8), (8, 20), (12, 8), (10, 10)]


def _params(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _clone(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def _set_grads(param_lists, seed):
    g = torch.Generator().manual_seed(seed)
    grads = [torch.randn(p.shape, generator=g) for p in param_lists[0]]
    for params in param_lists:
        for p, grad in zip(params, grads, strict=True):
            p.grad = grad.clone()


def test_adamw_groups_match_torch_adamw_step_for_step():
    shapes = [(7,), (5, 3), (2, 3, 4), ()]
    ref = _params(shapes)
    ours = _clone(ref)
    torch_opt = torch.optim.AdamW(ref, lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)
    opt = MuonAdamW([{"params": ours, "algorithm": "adamw", "lr": 1e-2, "weight_decay": 0.1}],
                    betas=(0.8, 0.99), eps=1e-8)
    for step in range(6):
        _set_grads([ref, ours], step)
        torch_opt.step()
        opt.step()
        for a, b in zip(ref, ours, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_torch_compatible_matches_torch_muon_bitwise(nesterov):
    ref = _params(SHAPES)
    ours = _clone(ref)
    torch_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="original")
    opt = MuonAdamW(ours, lr=0.02, weight_decay=0.1, nesterov=nesterov, method="jordan", steps=5,
                    adjust_lr="original", torch_compatible=True)
    for step in range(5):
        _set_grads([ref, ours], step)
        torch_opt.step()
        opt.step()
        for a, b in zip(ref, ours, strict=True):
            assert torch.equal(a, b)


def test_muon_default_normalisation_within_bf16_tolerance_of_torch_muon():
    # Larger, more varied shapes so that the float32-accumulated norm differs from torch's bf16 norm.
    shapes = [(64, 32), (32, 96), (64, 32), (48, 48)]
    ref = _params(shapes, seed=3)
    ours = _clone(ref)
    torch_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.0, adjust_lr_fn="original")
    opt = MuonAdamW(ours, lr=0.02, method="jordan", steps=5, adjust_lr="original")
    for step in range(5):
        before = [p.detach().clone() for p in ref]
        _set_grads([ref, ours], 10 + step)
        torch_opt.step()
        opt.step()
        for a, b, p0 in zip(ref, ours, before, strict=True):
            update_max = (a - p0).abs().max()
            assert (a - b).abs().max() <= 2**-6 * update_max


def test_converges_on_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    w_true = torch.randn(16, 8, generator=g)
    y = x @ w_true
    w = torch.nn.Parameter(torch.zeros(8, 16))  # (out, in) like nn.Linear
    b = torch.nn.Parameter(torch.zeros(8))
    opt = MuonAdamW([{"params": [w], "algorithm": "muon", "lr": 0.1},
                     {"params": [b], "algorithm": "adamw", "lr": 1e-2}], polar_dtype="float32")
    steps = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_constant_decay(0, steps))

    def loss_fn():
        return ((x @ w.T + b - y) ** 2).mean()

    first = loss_fn().item()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        sched.step()
    assert loss_fn().item() < 1e-2 * first  # ~5e-3 measured; Muon's fixed-size steps need the lr decay


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    return model, x, y


def _optimizer(model):
    groups = [
        {"name": "muon", "algorithm": "muon", "params": [model[0].weight], "lr": 0.03, "weight_decay": 0.01},
        {"name": "adamw", "algorithm": "adamw",
         "params": [model[0].bias, model[2].weight, model[2].bias], "lr": 3e-3},
    ]
    opt = MuonAdamW(groups, method="polar_express")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_constant_decay(2, 10))
    return opt, sched


def _train(model, opt, sched, x, y, steps):
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    return lrs


def test_state_dict_resume_equals_uninterrupted_and_schedule_owns_lr():
    model, x, y = _model_and_data()
    opt, sched = _optimizer(model)
    full_lrs = _train(model, opt, sched, x, y, 8)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, _, _ = _model_and_data()
    opt2, sched2 = _optimizer(model2)
    lrs = _train(model2, opt2, sched2, x, y, 4)
    buffer = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # group values are plain Python

    model3, _, _ = _model_and_data(seed=1)  # different init: everything must come from the checkpoint
    model3.load_state_dict(ckpt["model"])
    opt3, sched3 = _optimizer(model3)
    opt3.load_state_dict(ckpt["opt"])
    sched3.load_state_dict(ckpt["sched"])
    lrs += _train(model3, opt3, sched3, x, y, 4)
    assert lrs == full_lrs
    assert full_lrs[-1][0] < full_lrs[3][0]  # the schedule did decay after the resume point
    for a, b in zip(expected, model3.parameters(), strict=True):
        assert torch.equal(a, b)
    assert set(opt3.state[model3[0].weight]) == {"momentum_buffer"}


def test_closure_runs_with_grad_enabled_and_loss_is_returned():
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = MuonAdamW([w])

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.item() == pytest.approx((before**2).sum().item())
    assert not torch.equal(w, before)


def test_same_shape_matrices_share_one_batched_polar_call(monkeypatch):
    calls = []
    real = muon_adamw_module.orthogonalize

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(muon_adamw_module, "orthogonalize", counting)
    # (12, 8) tall and (8, 12) wide share a stack; (10, 10) is its own.
    params = _params([(12, 8), (8, 12), (12, 8), (10, 10)])
    single = _clone(params)
    opt = MuonAdamW(params, polar_dtype="float32", batch=True)
    _set_grads([params, single], 0)
    opt.step()
    assert sorted(calls) == [(1, 10, 10), (3, 8, 12)]
    # The default in one CPU process: one call per block, each as a matrix, no stack.
    calls.clear()
    fresh = _clone(params)
    _set_grads([fresh], 0)
    MuonAdamW(fresh, polar_dtype="float32").step()
    assert sorted(calls) == [(8, 12), (8, 12), (8, 12), (10, 10)]
    monkeypatch.setattr(muon_adamw_module, "orthogonalize", real)
    for p_batched, p in zip(params, single, strict=True):
        MuonAdamW([p], polar_dtype="float32").step()
        torch.testing.assert_close(p_batched, p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["gram", "auto"])
def test_form_changes_how_the_polar_step_is_multiplied_out_not_the_update(form):
    # float64 polar steps: the forms are the same polynomials, so the updates agree to rounding.
    shapes = [(12, 40), (40, 12), (16, 16)]
    rect = _params(shapes, seed=6)
    other = _clone(rect)
    opt_rect = MuonAdamW(rect, polar_dtype="float64")
    opt_other = MuonAdamW(other, polar_dtype="float64", form=form)
    for step in range(3):
        before = [p.detach().clone() for p in rect]
        _set_grads([rect, other], 20 + step)
        opt_rect.step()
        opt_other.step()
        for a, b, p0 in zip(rect, other, before, strict=True):
            assert not torch.equal(a, p0)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * (a - p0).abs().max().item())
    # In bf16 the forms round differently, which shows which one ran: "auto" keeps the square matrix
    # in rectangular form and takes the Gram form for the 12 x 40 pair.
    rect, other = _params(shapes, seed=7), _params(shapes, seed=7)
    _set_grads([rect, other], 30)
    MuonAdamW(rect).step()
    MuonAdamW(other, form=form).step()
    assert [torch.equal(a, b) for a, b in zip(rect, other, strict=True)] == [False, False, form == "auto"]


def test_split_and_per_head_blocks_are_each_orthogonal():
    d, heads = 8, 2
    w = torch.nn.Parameter(torch.randn(3 * d, d))
    w.grad = torch.randn(3 * d, d)
    before = w.detach().clone()
    opt = MuonAdamW([w], lr=0.1, method="svd", polar_dtype="float32", adjust_lr=None,
                    split_sizes=(d, d, d), num_heads=heads)
    opt.record_polar_updates = True
    opt.step()
    update = (before - w.detach()) / 0.1  # (3d, d)
    blocks = update.reshape(3 * heads, d // heads, d)  # (6, 4, 8): q/k/v heads
    gram = blocks @ blocks.mT
    torch.testing.assert_close(gram, torch.eye(d // heads).expand_as(gram), rtol=0, atol=1e-4)
    inputs, outputs = opt.polar_updates[w]
    assert inputs.shape == outputs.shape == (3 * heads, d // heads, d)
    assert inputs.dtype == outputs.dtype == torch.float32
    torch.testing.assert_close(outputs, blocks, rtol=0, atol=1e-5)
    # The whole matrix orthogonalised at once would not have orthogonal blocks.
    whole = orthogonalize(w.grad, "svd").reshape(3 * heads, d // heads, d)
    assert (whole @ whole.mT - torch.eye(d // heads)).abs().max() > 1e-2


def test_conv_weight_is_orthogonalised_as_out_by_rest():
    w = torch.nn.Parameter(torch.randn(6, 3, 2, 2))  # (out, in, kh, kw) -> (6, 12)
    w.grad = torch.randn_like(w)
    before = w.detach().clone()
    opt = MuonAdamW([w], lr=0.1, momentum=0.0, nesterov=False, method="svd", polar_dtype="float32",
                    adjust_lr=None)
    opt.step()
    expected = orthogonalize(w.grad.reshape(6, 12), "svd").reshape(w.shape)
    torch.testing.assert_close((before - w.detach()) / 0.1, expected, rtol=1e-5, atol=1e-5)


def test_recording_holds_inputs_and_outputs_only_while_enabled():
    params = _params([(6, 4), (5, 9)])
    opt = MuonAdamW([{"params": params[:1], "algorithm": "muon"},
                     {"params": params[1:], "algorithm": "adamw"}], polar_dtype="float32")
    _set_grads([params], 0)
    opt.step()
    assert opt.polar_updates == {}
    opt.record_polar_updates = True
    opt.step()
    assert list(opt.polar_updates) == [params[0]]
    inp, out = opt.polar_updates[params[0]]
    assert inp.shape == out.shape == (1, 6, 4)
    torch.testing.assert_close(out, orthogonalize(inp, "polar_express", dtype=torch.float32))
    opt.record_polar_updates = False
    opt.step()
    assert opt.polar_updates == {}


def test_weight_decay_uses_the_unadjusted_lr():
    w = torch.nn.Parameter(torch.randn(8, 2))  # rows/cols = 4: "original" factor 2
    w.grad = torch.zeros(8, 2)
    before = w.detach().clone()
    MuonAdamW([w], lr=0.1, weight_decay=0.5).step()  # zero gradient: only the decay moves w
    torch.testing.assert_close(w.detach(), before * (1 - 0.1 * 0.5))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"momentum": 1.0}, "momentum"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"method": "nope"}, "nope"),
        ({"method": [(1.0,)]}, "coefficient"),
        ({"steps": 0}, "steps"),
        ({"method": "svd", "steps": 3}, "svd"),
        ({"polar_dtype": torch.bfloat16}, "polar_dtype"),
        ({"adjust_lr": "sqrt"}, "sqrt"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"eps": -1e-8}, "eps"),
        ({"split_sizes": (5, 5)}, "split_sizes"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"algorithm": "sgd"}, "sgd"),
        ({"nesterov": 1}, "nesterov"),
        ({"form": "fast"}, "'fast'"),
        ({"batch": "yes"}, "batch"),
        ({"form": "gram", "torch_compatible": True}, "exclude"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MuonAdamW([torch.nn.Parameter(torch.randn(8, 4))], **kwargs)


def test_one_dimensional_parameter_in_a_muon_group_is_refused():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        MuonAdamW([torch.nn.Parameter(torch.randn(5))])


def test_adamw_group_without_lr_takes_adamw_lr():
    opt = MuonAdamW([{"params": [torch.nn.Parameter(torch.randn(3))], "algorithm": "adamw"}], adamw_lr=1e-3)
    assert opt.param_groups[0]["lr"] == 1e-3


def test_shape_factor_values():
    assert shape_factor(3072, 768, "original") == 2.0
    assert shape_factor(768, 3072, "original") == 1.0
    assert shape_factor(768, 3072, "match_rms_adamw") == pytest.approx(0.2 * math.sqrt(3072))
    assert shape_factor(768, 3072, "spectral") == 0.5
    assert shape_factor(768, 3072, None) == 1.0


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), heads=st.integers(1, 3))
def test_matrix_blocks_tile_the_rows(sizes, heads):
    split = [s * heads for s in sizes]
    blocks = matrix_blocks(sum(split), split, heads)
    covered = [r for first, rows, n in blocks for r in range(first, first + rows * n)]
    assert covered == list(range(sum(split)))
    assert all(n == heads for _, _, n in blocks)


def test_rejected_add_param_group_leaves_the_optimizer_unchanged():
    opt = MuonAdamW([torch.nn.Parameter(torch.randn(4, 4))])
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(4, 4))], "momentum": 2.0})
    assert len(opt.param_groups) == 1
