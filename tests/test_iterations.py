"""orthogonalize against the SVD polar factor, the scalar composition and torch.optim.Muon."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim._muon import _zeropower_via_newtonschulz
from torch.utils._python_dispatch import TorchDispatchMode

from polar_lightning.polar import (
    METHOD_NAMES,
    PolarMethod,
    apply_polynomials,
    multiply_adds,
    optimal_coefficients,
    orthogonalize,
    orthogonalize_many,
    polar_coefficients,
    polar_iterates,
)

JORDAN = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's default ns_coefficients


def _with_spectrum(shape: tuple[int, ...], singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    """float64 matrices U diag(s) V^T of shape (..., m, n) with random orthonormal U, V."""
    *batch, m, n = shape
    k = min(m, n)
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=gen, dtype=torch.float64))  # (.., m, k)
    v, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=gen, dtype=torch.float64))  # (.., n, k)
    return (u * singular_values.to(torch.float64)) @ v.mT


def _svd_polar64(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g.to(torch.float64), full_matrices=False)
    return u @ vh


def _spectral(a: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a.to(torch.float64), ord=2).max())


# ---- against the SVD polar factor -------------------------------------------------------------------

shapes = st.sampled_from([(24, 24), (8, 40), (40, 8), (3, 16, 16), (2, 2, 12, 20), (2, 20, 12)])


@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), log_scale=st.floats(-3, 3), log_cond=st.floats(0, 2))
def test_matches_svd_polar_factor_in_float32(shape, seed: int, log_scale: float, log_cond: float) -> None:
    k = min(shape[-2:])
    # Condition number up to 100 and any overall scale: the normalised smallest singular value stays
    # above the l = 1e-3 the coefficients were built for, so 8 steps converge to fp32 accuracy.
    s = torch.logspace(-log_cond, 0, k, dtype=torch.float64) * 10**log_scale
    g = _with_spectrum(shape, s, seed)
    x = orthogonalize(g.float(), "polar_express", steps=8, dtype=torch.float32)
    assert x.shape == g.shape and x.dtype == torch.float32
    assert _spectral(x - _svd_polar64(g)) < 1e-4


@settings(max_examples=10, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), log_scale=st.floats(-3, 3))
def test_bfloat16_is_within_its_rounding_floor(shape, seed: int, log_scale: float) -> None:
    k = min(shape[-2:])
    s = torch.logspace(-1, 0, k, dtype=torch.float64) * 10**log_scale  # condition number 10
    g = _with_spectrum(shape, s, seed)
    for dtype in (torch.float32, torch.bfloat16):
        x = orthogonalize(g.to(dtype), "polar_express", steps=8, dtype=torch.bfloat16)
        assert x.dtype == dtype
        sv = torch.linalg.svdvals(x.double())
        # bf16 unit roundoff is 2^-8 = 3.9e-3; measured: |s - 1| <= 5e-3, distance <= 0.017.
        assert (sv - 1).abs().max() < 0.02
        assert _spectral(x - _svd_polar64(g)) < 0.05


@settings(max_examples=10, deadline=None)
@given(wide=st.booleans(), seed=st.integers(0, 2**16))
def test_gaussian_rectangular_matrices(wide: bool, seed: int) -> None:
    # Aspect ratio 4: s_min / s_max of a Gaussian matrix is about (1 - 1/2) / (1 + 1/2) = 1/3.
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(12, 48, generator=gen, dtype=torch.float64)
    g = g if wide else g.T
    x = orthogonalize(g.float(), "polar_express", steps=8, dtype=torch.float32)
    assert _spectral(x - _svd_polar64(g)) < 1e-4


@pytest.mark.parametrize("shape", [(16, 32), (32, 16), (2, 24, 24)])
def test_rank_deficient_converges_to_the_partial_isometry(shape: tuple[int, ...]) -> None:
    k = min(shape[-2:])
    s = torch.logspace(-2, 0, k, dtype=torch.float64)
    s[k - 5 :] = 0.0  # rank k - 5
    g = _with_spectrum(shape, s, seed=7)
    u, sv, vh = torch.linalg.svd(g, full_matrices=False)
    r = k - 5
    polar = u[..., :r] @ vh[..., :r, :]  # (.., m, n): U_r V_r^T
    x32 = orthogonalize(g.float(), "polar_express", steps=8, dtype=torch.float32).double()
    # fp32 rounding seeds the null space at ~1e-7, which 8 steps amplify by ~7e3 (product of the
    # first-order coefficients): measured 2e-4.
    assert _spectral(x32 - polar) < 1e-2
    assert _spectral(orthogonalize(g, "svd") - polar) < 1e-10
    # In bf16 the null space is rounding noise and is pushed towards 1 like any other direction;
    # on the row space the result is still U_r.
    x16 = orthogonalize(g.float(), "polar_express", steps=8, dtype=torch.bfloat16).double()
    v_r = vh[..., :r, :].mT  # (.., n, r)
    assert _spectral(x16 @ v_r - u[..., :r]) < 0.1


# ---- exact semantics in float64: the matrix iteration is the scalar composition -----------------------


@pytest.mark.parametrize(
    "method",
    ["polar_express", "polar_express_5", "jordan", "you", "newton_schulz", [(1.5, -0.5), (2.0, -1.5, 0.5)],
     [(35 / 16, -35 / 16, 21 / 16, -5 / 16)]],
    ids=["polar_express", "polar_express_5", "jordan", "you", "newton_schulz", "custom-3-5", "custom-7"],
)
@pytest.mark.parametrize("steps", [1, 3, 9])
def test_float64_iteration_applies_the_scalar_composition(method, steps: int) -> None:
    shape = (20, 12)  # tall: exercises the transpose
    s = torch.logspace(0.5, -3, 12, dtype=torch.float64)  # descending, as the SVD below orders them
    g = _with_spectrum(shape, s, seed=3)
    table, prefactor, eps = polar_coefficients(method)
    table = [table[min(k, len(table) - 1)] for k in range(steps)]  # the last tuple repeats
    norm = float(torch.linalg.matrix_norm(g))
    expected_s = apply_polynomials(table, s.numpy() / (norm * prefactor + eps))
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    expected = (u * torch.from_numpy(expected_s)) @ vh
    x = orthogonalize(g, method, steps=steps, dtype=torch.float64)
    assert torch.allclose(x, expected, rtol=0, atol=1e-10 * max(1.0, float(np.abs(expected_s).max())))


def test_normalize_false_runs_the_polynomials_on_the_input() -> None:
    s = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    g = _with_spectrum((8, 16), s, seed=1)
    table, _, _ = polar_coefficients("you")
    x = orthogonalize(g, "you", steps=2, dtype=torch.float64, normalize=False)
    got = np.sort(torch.linalg.svdvals(x).numpy())
    assert np.allclose(got, np.sort(apply_polynomials(table[:2], s.numpy())), rtol=0, atol=1e-12)


def test_published_scalar_band_for_jordan() -> None:
    # polar-express.md, "Scalar check": Jordan Newton-Schulz, 5 steps, maps [1e-3, 1] to [0.471, 1.202].
    table, prefactor, _ = polar_coefficients("jordan")
    out = apply_polynomials(table * 5, np.geomspace(1e-3, 1.0, 200001) / prefactor)
    assert out.min() == pytest.approx(0.471, abs=5e-4) and out.max() == pytest.approx(1.202, abs=5e-4)


def test_polar_express_beats_peers_at_every_step() -> None:
    """The issue's bar: on a matrix with spectrum in [1e-3, 1] / prefactor (no normalisation), and
    on the float64 scalar map, Polar Express's error is below Jordan's and You's for k = 1..8."""
    x = np.geomspace(1e-3, 1.0, 100001)
    s = torch.logspace(-3, 0, 32, dtype=torch.float64)
    worst_scalar, worst_matrix = {}, {}
    for name in ("polar_express", "jordan", "you"):
        table, prefactor, _ = polar_coefficients(name)
        g = _with_spectrum((32, 48), s / prefactor, seed=11).float()
        worst_scalar[name], worst_matrix[name] = [], []
        for k in range(1, 9):
            steps = [table[min(j, len(table) - 1)] for j in range(k)]
            worst_scalar[name].append(float(np.abs(1 - apply_polynomials(steps, x / prefactor)).max()))
            out = orthogonalize(g, name, k, torch.float32, normalize=False)
            worst_matrix[name].append(float((torch.linalg.svdvals(out.double()) - 1).abs().max()))
    for worst in (worst_scalar, worst_matrix):
        for k in range(8):
            assert worst["polar_express"][k] < min(worst["jordan"][k], worst["you"][k]), (k + 1, worst)


# ---- torch.optim.Muon ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (40, 40), (33, 17)])
def test_jordan_is_bitwise_torch_muon_iteration(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    theirs = _zeropower_via_newtonschulz(g.clone(), JORDAN, 5, 1e-7)
    ours = orthogonalize(g, "jordan", dtype=torch.bfloat16, torch_compatible=True)
    assert torch.equal(ours, theirs.float())
    assert torch.equal(orthogonalize(g.bfloat16(), "jordan", torch_compatible=True), theirs)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16)])
def test_jordan_matches_a_torch_muon_step(shape: tuple[int, int]) -> None:
    """Two Muon steps with momentum against the documented update built on orthogonalize."""
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(*shape, generator=gen) for _ in range(2)]
    lr, momentum = 0.5, 0.95
    # "original" lr adjustment: lr * sqrt(max(1, rows / cols)); 64 / 16 = 4 keeps it exact.
    adjusted = lr * max(1.0, shape[0] / shape[1]) ** 0.5
    param = torch.nn.Parameter(torch.zeros(*shape))
    opt = torch.optim.Muon([param], lr=lr, weight_decay=0.0, momentum=momentum, nesterov=True)
    expected = torch.zeros(*shape)
    buf = torch.zeros(*shape)
    for grad in grads:
        param.grad = grad.clone()
        opt.step()
        # torch.optim.Muon's momentum: buf <- lerp(buf, g, 1 - mu); Nesterov: lerp(g, buf, mu).
        buf.lerp_(grad, 1 - momentum)
        update = orthogonalize(grad.lerp(buf, momentum), "jordan", torch_compatible=True)
        expected.add_(update, alpha=-adjusted)
    assert torch.equal(param.detach(), expected)


# ---- edge cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_matrix_gives_zeros(method: str, dtype: torch.dtype) -> None:
    for shape in [(6, 10), (10, 6), (2, 5, 5)]:
        x = orthogonalize(torch.zeros(*shape, dtype=dtype), method)
        assert x.dtype == dtype and x.shape == shape and torch.equal(x, torch.zeros_like(x))
    x = orthogonalize(torch.zeros(4, 8), "jordan", torch_compatible=True)
    assert torch.equal(x, torch.zeros_like(x))


@pytest.mark.parametrize("bad", [torch.ones(5), torch.tensor(1.0)])
def test_needs_a_matrix(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., m, n\)"):
        orthogonalize(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input(value: float) -> None:
    g = torch.randn(6, 9)
    g[2, 3] = value
    with pytest.raises(ValueError, match="non-finite"):
        orthogonalize(g)
    with pytest.raises(ValueError, match="non-finite"):
        orthogonalize_many([torch.randn(6, 9), g], batch=True)
    assert not torch.isfinite(orthogonalize(g, check_finite=False)).all()


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"method": "muon"}, "'muon'"),
        ({"method": []}, "at least one step"),
        ({"method": [(1.0,)]}, r"\(1\.0,\)"),
        ({"method": [(1.0, float("nan"))]}, "nan"),
        ({"steps": 0}, "steps=0|got 0"),
        ({"steps": 2.5}, "2.5"),
        ({"steps": True}, "True"),
        ({"method": "svd", "steps": 3}, "steps=3"),
        ({"dtype": torch.int32}, "torch.int32"),
        ({"out_dtype": torch.int64}, "torch.int64"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=shown):
        orthogonalize(torch.randn(4, 6), **kwargs)


@pytest.mark.parametrize("method", ["polar_express", "svd"])
def test_out_dtype_skips_only_the_cast_back(method: str) -> None:
    g = torch.randn(2, 12, 20, generator=torch.Generator().manual_seed(8))
    kept = orthogonalize(g, method, out_dtype=torch.bfloat16)
    assert kept.dtype == torch.bfloat16 and kept.shape == g.shape
    assert torch.equal(kept, orthogonalize(g, method).bfloat16())


class _CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm,
                                   torch.ops.aten.baddbmm):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("method", "per_step"), [("polar_express", 3), ("newton_schulz", 2),
                                                  ([(35 / 16, -35 / 16, 21 / 16, -5 / 16)], 4)])
@pytest.mark.parametrize("shape", [(8, 12), (2, 12, 8)])
def test_matrix_products_per_step(method, per_step: int, shape: tuple[int, ...]) -> None:
    with _CountMatmuls() as counter:
        orthogonalize(torch.randn(*shape), method, steps=4)
    assert counter.count == 4 * per_step


# ---- Gram form -----------------------------------------------------------------------------------------


class _CountMultiplyAdds(TorchDispatchMode):
    """Sum of m * k * n over the matrix products dispatched (batched ones times the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (torch.ops.aten.mm, torch.ops.aten.bmm):
            a, b = args[0], args[1]
        elif packet in (torch.ops.aten.addmm, torch.ops.aten.baddbmm):
            a, b = args[1], args[2]
        else:
            return func(*args, **(kwargs or {}))
        self.total += a.shape[:-1].numel() * a.shape[-1] * b.shape[-1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "method",
    ["polar_express", "jordan", "newton_schulz", [(35 / 16, -35 / 16, 21 / 16, -5 / 16)]],
    ids=["polar_express", "jordan", "newton_schulz", "custom-7"],
)
@pytest.mark.parametrize("steps", [1, 2, 5, 9])
def test_gram_form_is_the_same_iteration_in_float64(method, steps: int) -> None:
    """Exact arithmetic cannot tell the forms apart: in float64 they agree to rounding."""
    for shape in [(6, 40), (40, 6), (3, 5, 17)]:
        g = torch.randn(*shape, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
        rect = orthogonalize(g, method, steps, torch.float64)
        gram = orthogonalize(g, method, steps, torch.float64, form="gram")
        assert gram.shape == g.shape and gram.dtype == g.dtype
        assert (gram - rect).abs().max() < 1e-10


@pytest.mark.parametrize("steps", [1, 4, 5, 8])
@pytest.mark.parametrize("shape", [(8, 40), (2, 8, 8), (24, 12)])
def test_multiply_adds_counts_what_runs(steps: int, shape: tuple[int, ...]) -> None:
    table = polar_coefficients("polar_express")[0]
    used = [table[min(k, len(table) - 1)] for k in range(steps)]
    m, n = sorted(shape[-2:])
    batch = int(np.prod(shape[:-2]))
    for form in ("rectangular", "gram"):
        with _CountMultiplyAdds() as counter:
            orthogonalize(torch.randn(*shape), "polar_express", steps, torch.float32, form=form)
        assert counter.total == batch * multiply_adds(m, n, used, form), form
    # GPT-2's MLP matrix, 5 steps: 45 m^3 rectangular, 35 m^3 in Gram form (restarts every 2 steps).
    assert multiply_adds(768, 3072, table[:5], "rectangular") == 45 * 768**3
    assert multiply_adds(768, 3072, table[:5], "gram") == 35 * 768**3


def test_auto_form_takes_the_cheaper_form() -> None:
    gen = torch.Generator().manual_seed(4)
    for shape, cheaper in [((16, 16), "rectangular"), ((16, 20), "rectangular"), ((16, 64), "gram"),
                           ((64, 16), "gram"), ((2, 16, 48), "gram")]:
        g = torch.randn(*shape, generator=gen)
        auto = orthogonalize(g, form="auto")
        assert torch.equal(auto, orthogonalize(g, form=cheaper)), shape
        other = "gram" if cheaper == "rectangular" else "rectangular"
        assert not torch.equal(auto, orthogonalize(g, form=other)), shape  # the forms round differently


def test_gram_form_in_bfloat16_stays_close_to_the_rectangular_form() -> None:
    """Rank-deficient input in bf16, the Gram form's hard case: restarts keep it bounded.

    Measured: row-space error 0.156 / 0.089 (Gram) against 0.128 / 0.032 (rectangular) at 5 / 8 steps,
    s_max 1.125 / 1.008; with restarts every 3 steps instead of 2 the Gram form reached s_max 2.8
    after 5 steps and overflowed (1e37) after 8.
    """
    m, n, rank = 64, 256, 44
    s = torch.logspace(0, -2, m, dtype=torch.float64)
    s[rank:] = 0.0
    g = _with_spectrum((m, n), s, seed=7)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    for steps, row_space_bound in [(5, 0.25), (8, 0.25)]:
        x = orthogonalize(g.float(), "polar_express", steps, torch.bfloat16, form="gram").double()
        assert torch.linalg.matrix_norm(x @ vh[:rank].mT - u[:, :rank], ord=2) < row_space_bound
        assert torch.linalg.svdvals(x).max() < 1.2
    x = orthogonalize(g.float(), "polar_express", 8, torch.bfloat16, form="gram").double()
    assert torch.linalg.svdvals(x @ vh[:rank].mT).min() > 0.85  # the row space did converge


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [({"form": "fast"}, "'fast'"), ({"form": "gram", "torch_compatible": True}, "torch_compatible")],
)
def test_rejects_bad_forms(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=shown):
        orthogonalize(torch.randn(4, 6), **kwargs)


# ---- torch.compile -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiles_with_fullgraph(backend: str) -> None:
    torch._dynamo.reset()

    for form in ("rectangular", "gram"):

        def step(g: torch.Tensor, form: str = form) -> torch.Tensor:
            # check_finite stays at its default: it must skip itself while tracing.
            return orthogonalize(g, "polar_express", steps=5, dtype=torch.float32, form=form)

        compiled = torch.compile(step, fullgraph=True, backend=backend)
        for shape in [(12, 20), (20, 12)]:
            g = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
            assert torch.allclose(compiled(g), step(g), rtol=1e-5, atol=1e-6)


# ---- orthogonalize_many ------------------------------------------------------------------------------


def test_orthogonalize_many_matches_separate_calls() -> None:
    gen = torch.Generator().manual_seed(5)
    shapes = [(12, 36), (36, 12), (8, 8), (12, 36), (8, 8), (5, 7)]
    mats = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
    mats[2] = mats[2].float()
    for method, batch in [("polar_express", True), ("jordan", True), ("svd", True), ("you", None)]:
        dtype = torch.float64
        got = orthogonalize_many(mats, method, dtype=dtype, batch=batch)
        for m, x in zip(mats, got, strict=True):
            assert x.shape == m.shape and x.dtype == m.dtype
            want = orthogonalize(m, method, dtype=dtype)
            atol = 1e-6 if m.dtype == torch.float32 else 1e-12
            assert torch.allclose(x.double(), want.double(), rtol=0, atol=atol)
    for batch in (True, False):
        kept = orthogonalize_many(mats, out_dtype=torch.bfloat16, batch=batch)
        assert all(x.dtype == torch.bfloat16 for x in kept)
        full = orthogonalize_many(mats, batch=batch)
        assert all(torch.equal(x, y.bfloat16()) for x, y in zip(kept, full, strict=True))
    bf = orthogonalize_many([m.float() for m in mats], batch=True)
    for m, x in zip(mats, bf, strict=True):
        assert (x.double() - orthogonalize(m.float()).double()).abs().max() < 0.05  # bf16 rounding


def test_orthogonalize_many_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="item 1"):
        orthogonalize_many([torch.randn(3, 4), torch.randn(2, 3, 4)])
    assert orthogonalize_many([]) == []


# ---- polar_iterates and PolarMethod -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10, 14), (14, 10), (2, 3, 6, 9)])
def test_polar_iterates_walk_the_same_iteration(shape: tuple[int, ...]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    iterates = list(polar_iterates(g, "you", steps=7))
    assert len(iterates) == 7 and all(x.shape == g.shape and x.dtype == torch.bfloat16 for x in iterates)
    for k in (1, 4, 7):
        assert torch.equal(iterates[k - 1].float(), orthogonalize(g, "you", steps=k))


def test_a_polar_method_carries_its_own_normalisation() -> None:
    table = optimal_coefficients(1e-3, 6, cushion=0.02, safety=1.02)
    spec = PolarMethod("matched", tuple(table), prefactor=1.02, eps=1e-6, default_steps=6)
    g = torch.randn(12, 20, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x = orthogonalize(g, spec, dtype=torch.float64)
    s = torch.linalg.svdvals(g).numpy()
    expected = apply_polynomials(table, s / (float(torch.linalg.matrix_norm(g)) * 1.02 + 1e-6))
    assert np.allclose(np.sort(torch.linalg.svdvals(x).numpy()), np.sort(expected), rtol=0, atol=1e-10)
