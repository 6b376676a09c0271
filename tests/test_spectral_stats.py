"""Spectral statistics against matrices with known singular values and synthetic power laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polar_lightning.callbacks.spectral_stats import (
    as_matrix,
    batched_singular_values,
    effective_rank,
    esd_alpha,
    polar_error_stats,
    power_law_alpha,
    projected_polar_values,
    singular_values,
    spectral_norm,
    stable_rank,
    update_rms_ratio,
)


def _orthonormal(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q  # (n, k), orthonormal columns


def _with_singular_values(s: list[float], m: int, n: int, seed: int = 0) -> torch.Tensor:
    """An (m, n) float64 matrix U diag(s) V^T with random orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    k = len(s)
    u, v = _orthonormal(m, k, gen), _orthonormal(n, k, gen)
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize(("method", "zero_tol"), [("svd", 1e-5), ("gram", 1e-5)])
def test_constructed_matrix_gives_exact_statistics(method: str, zero_tol: float) -> None:
    s = [4.0, 2.0, 1.0, 0.5, 0.25]
    w = _with_singular_values(s, 12, 7).float()
    got = singular_values(w, method)
    assert got.dtype == torch.float32 and got.shape == (7,)
    torch.testing.assert_close(got[:5], torch.tensor(s), rtol=3e-5, atol=1e-5)
    # Rank 5 (the Gram route works in float64, so its zeros are resolved like the SVD's).
    assert float(got[5:].abs().max()) < zero_tol
    # Hand-computed: stable rank = sum s^2 / s_max^2; effective rank = exp(H(s / sum s)).
    assert stable_rank(got) == pytest.approx(sum(x * x for x in s) / 16.0, rel=1e-5)
    p = np.array(s) / sum(s)
    assert effective_rank(got) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert spectral_norm(got) == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_flat_spectrum_ranks_equal_rank(k: int) -> None:
    s = torch.ones(k)
    assert stable_rank(s) == pytest.approx(k)
    assert effective_rank(s) == pytest.approx(k)
    # Zero singular values do not change either rank.
    padded = torch.cat([s, torch.zeros(4)])
    assert stable_rank(padded) == pytest.approx(k)
    assert effective_rank(padded) == pytest.approx(k)


def test_zero_matrix_statistics_are_zero() -> None:
    s = singular_values(torch.zeros(5, 3))
    assert stable_rank(s) == 0.0 and effective_rank(s) == 0.0


def test_effective_rank_uses_l1_normalisation() -> None:
    # s = (3, 1): Roy & Vetterli's p = (3/4, 1/4), not the energy normalisation (9/10, 1/10).
    p = np.array([0.75, 0.25])
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_update_rms_ratio() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 4, generator=gen)
    assert update_rms_ratio(0.01 * w, w) == pytest.approx(0.01, rel=1e-6)
    assert update_rms_ratio(-3.0 * w, w) == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        update_rms_ratio(torch.zeros(4, 6), w)


def test_gram_and_svd_agree_on_wide_and_tall_matrices() -> None:
    gen = torch.Generator().manual_seed(4)
    for shape in [(40, 9), (9, 40)]:  # both sides of the Gram
        a = torch.randn(*shape, generator=gen)
        gram, svd = singular_values(a, "gram"), singular_values(a, "svd")
        torch.testing.assert_close(gram, svd, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        singular_values(a, "qr")


def test_conv_kernel_is_flattened_per_output_channel() -> None:
    k = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    assert as_matrix(k).shape == (8, 12)
    torch.testing.assert_close(singular_values(k, "svd"), torch.linalg.svdvals(k.reshape(8, 12)))
    with pytest.raises(ValueError, match="dims"):
        as_matrix(torch.zeros(5))


def test_batched_singular_values_match_per_block() -> None:
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(3))
    got = batched_singular_values(x)
    for b in range(3):
        torch.testing.assert_close(got[b], torch.linalg.svdvals(x[b]))
    with pytest.raises(ValueError, match="blocks"):
        batched_singular_values(x[0])


def _pareto(n: int, alpha: float, xmin: float, gen: torch.Generator) -> torch.Tensor:
    """Samples with density proportional to x^-alpha on [xmin, inf) (inverse CDF)."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return xmin * u.pow(-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_alpha_recovers_known_exponent_with_a_bulk_below(alpha: float) -> None:
    gen = torch.Generator().manual_seed(1234)
    tail = _pareto(10_000, alpha, 1.0, gen)
    # A non-power-law bulk under the tail's start: the KS scan must find x_min ~ 1.
    bulk = 0.9 * torch.rand(5_000, generator=gen, dtype=torch.float64)
    fit = power_law_alpha(torch.cat([bulk, tail])[torch.randperm(15_000, generator=gen)])
    assert fit.alpha == pytest.approx(alpha, rel=0.10)
    # The tail's start lies above the bulk (any start >= 1 leaves an exact power law; KS noise picks).
    assert fit.xmin > 0.85
    assert fit.n_tail >= 1_000


def test_alpha_of_weight_uses_eigenvalues_of_wtw() -> None:
    gen = torch.Generator().manual_seed(5)
    lam = torch.sort(_pareto(400, 3.0, 1.0, gen), descending=True).values
    w = _with_singular_values(lam.sqrt().tolist(), 500, 400, seed=6)
    assert esd_alpha(w) == pytest.approx(power_law_alpha(lam).alpha, rel=1e-3)


def test_alpha_estimator_edge_cases() -> None:
    assert math.isnan(power_law_alpha(torch.ones(10)).alpha)  # fewer than min_tail samples
    assert math.isnan(power_law_alpha(torch.ones(100)).alpha)  # no spread
    with pytest.raises(ValueError, match="min_tail"):
        power_law_alpha(torch.rand(100), min_tail=1)
    with pytest.raises(ValueError, match="1-D"):
        power_law_alpha(torch.rand(10, 10))


def _odd_poly(s: torch.Tensor) -> torch.Tensor:
    # Any odd map of the singular values stands in for a polar iteration's output.
    return 1.5 * s - 0.5 * s**3


def test_polar_error_over_the_inputs_directions() -> None:
    # Four real directions and two at 1e-6 of the largest (below the 1e-3 cut).
    s = torch.tensor([1.0, 0.8, 0.5, 0.2, 1e-6, 1e-6], dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    u, v = _orthonormal(9, 6, gen), _orthonormal(6, 6, gen)
    m = u @ torch.diag(s) @ v.T  # (9, 6)
    o = u @ torch.diag(_odd_poly(s)) @ v.T
    err = polar_error_stats(m.float(), o.float())
    expected = (_odd_poly(s[:4]) - 1).abs()
    assert err.n_directions == 4
    assert err.max == pytest.approx(float(expected.max()), abs=1e-5)
    assert err.median == pytest.approx(float(expected.quantile(0.5)), abs=1e-5)


def test_exact_polar_factor_has_zero_error_even_when_rank_deficient() -> None:
    gen = torch.Generator().manual_seed(8)
    s = torch.tensor([2.0, 1.0, 0.3, 0.0, 0.0], dtype=torch.float64)
    u, v = _orthonormal(7, 5, gen), _orthonormal(5, 5, gen)
    m = u @ torch.diag(s) @ v.T
    o = u[:, :3] @ v[:, :3].T  # the exact polar factor of a rank-3 matrix
    err = polar_error_stats(m.float(), o.float())
    assert err.n_directions == 3 and err.max < 1e-5
    # The output's own singular values would read as error 1 in the two missing directions.
    assert float((torch.linalg.svdvals(o) - 1).abs().max()) == pytest.approx(1.0, abs=1e-6)


def test_polar_error_over_blocks_and_mixing_inside_the_subspace() -> None:
    gen = torch.Generator().manual_seed(9)
    blocks_in, blocks_out, errs = [], [], []
    for b in range(3):
        s = torch.linspace(1.0, 0.1 * (b + 1), 4, dtype=torch.float64)
        u, v = _orthonormal(6, 4, gen), _orthonormal(5, 4, gen)
        q = _orthonormal(4, 4, gen)  # rotation inside the kept subspace: singular values unchanged
        blocks_in.append(u @ torch.diag(s) @ v.T)
        blocks_out.append(u @ q @ torch.diag(_odd_poly(s)) @ v.T)
        errs.append((_odd_poly(s) - 1).abs())
    inputs, outputs = torch.stack(blocks_in).float(), torch.stack(blocks_out).float()  # (3, 6, 5)
    err = polar_error_stats(inputs, outputs)
    every = torch.cat(errs)
    assert err.n_directions == 12
    assert err.max == pytest.approx(float(every.max()), abs=1e-5)
    assert err.median == pytest.approx(float(every.quantile(0.5)), abs=1e-5)
    assert len(projected_polar_values(inputs, outputs)) == 3


def test_polar_error_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        polar_error_stats(torch.zeros(3, 4), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="threshold"):
        polar_error_stats(torch.ones(3, 4), torch.ones(3, 4), threshold=0.0)
    assert math.isnan(polar_error_stats(torch.zeros(3, 4), torch.zeros(3, 4)).max)
