"""LambdaLR multipliers: shape, validation, pickling."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from polar_lightning.optim import warmup_constant_decay, warmup_cosine


def test_warmup_constant_decay_shape():
    f = warmup_constant_decay(warmup_steps=10, total_steps=100)  # decay starts at 40% (paper setting)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == 1.0
    assert f(10) == 1.0 and f(39) == 1.0
    assert f(40) == 1.0
    assert f(70) == pytest.approx(0.5)
    assert f(99) == pytest.approx(1 / 60)
    assert f(100) == 0.0 and f(150) == 0.0
    values = [f(s) for s in range(40, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_warmup_longer_than_constant_phase_decays_after_warmup():
    f = warmup_constant_decay(50, 100, constant_fraction=0.1)
    assert f(49) == 1.0 and f(75) == pytest.approx(0.5)


def test_warmup_cosine_shape():
    f = warmup_cosine(5, 105, min_ratio=0.1)
    assert f(0) == pytest.approx(0.2)
    assert f(5) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(105) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    g = warmup_cosine(0, 10)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize(
    ("factory", "args", "needle"),
    [
        (warmup_constant_decay, (-1, 10), "warmup_steps"),
        (warmup_constant_decay, (5, 0), "total_steps"),
        (warmup_constant_decay, (20, 10), "exceeds"),
        (warmup_constant_decay, (1, 10, 1.5), "constant_fraction"),
        (warmup_cosine, (1, 10, -0.1), "min_ratio"),
        (warmup_cosine, (1.5, 10), "warmup_steps"),
    ],
)
def test_validation(factory, args, needle):
    with pytest.raises(ValueError, match=needle):
        factory(*args)


def test_schedulers_pickle_inside_lambdalr_state():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=1.0)
    for f in (warmup_constant_decay(2, 10), warmup_cosine(2, 10, 0.1)):
        sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
        restored = pickle.loads(pickle.dumps(f))
        assert [restored(s) for s in range(12)] == [f(s) for s in range(12)]
        assert "lr_lambdas" in sched.state_dict()
        pickle.dumps(sched.state_dict())
        assert repr(restored) == repr(f)
