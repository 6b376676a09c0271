"""optimal_coefficients against the published Polar Express tables and the minimax properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polar_lightning.polar.coefficients import (
    NEWTON_SCHULZ_LIMITS,
    apply_polynomials,
    optimal_coefficients,
    remez_odd,
    with_safety,
)

# ../shared/reference/polar-express.md, "Published coefficients (paper's Implementation 1), BEFORE the
# safety factor": l = 1e-3, 8 steps, no safety, cushion 0.02407327424182761.
PAPER_TABLE = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
PAPER_CUSHION = 0.02407327424182761
# Same file, "The 5-step list used by modded-nanogpt and microsoft/dion": l = 1e-3, 5 steps,
# safety 1.02, cushion 0.02.
FIVE_STEP_LIST = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]

# Normalised singular values over [1e-3, 1]: dense near both ends, where the extremes sit.
GRID = np.unique(np.concatenate([np.geomspace(1e-3, 1.0, 20001), np.linspace(1e-3, 1.0, 20001)]))


def _assert_rel_close(got: list[tuple[float, ...]], want: list[tuple[float, ...]], rtol: float) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        rel = np.abs(np.array(g) - np.array(w)) / np.abs(np.array(w))
        assert rel.max() <= rtol, f"step {step}: {g} vs {w} (relative error {rel.max():.2e})"


def test_reproduces_paper_table() -> None:
    got = optimal_coefficients(1e-3, 8, cushion=PAPER_CUSHION)
    _assert_rel_close(got, PAPER_TABLE, 1e-9)
    assert got[-1] == (1.875, -1.25, 0.375)  # the Newton-Schulz limit, literally


def test_reproduces_five_step_list() -> None:
    _assert_rel_close(optimal_coefficients(1e-3, 5, cushion=0.02, safety=1.02), FIVE_STEP_LIST, 1e-9)


def _paper_with_safety() -> list[tuple[float, ...]]:
    return with_safety(optimal_coefficients(1e-3, 8, cushion=PAPER_CUSHION), 1.01)


@pytest.mark.parametrize(
    ("coefficients", "prefactor", "band"),
    [
        # polar-express.md, "Scalar check": the paper's table, then f = 1.01 on all but its last step.
        (lambda: _paper_with_safety()[:5], 1.01, (0.840, 1.124)),
        (lambda: optimal_coefficients(1e-3, 5, cushion=0.02, safety=1.02), 1.02, (0.847, 1.141)),
        (lambda: _paper_with_safety(), 1.01, (1.000, 1.000)),
    ],
    ids=["paper-5-steps", "five-step-list", "paper-8-steps"],
)
def test_composition_lands_in_published_band(
    coefficients, prefactor: float, band: tuple[float, float]
) -> None:
    out = apply_polynomials(coefficients(), GRID / prefactor)
    # The reference rounds to three decimals.
    assert out.min() == pytest.approx(band[0], abs=5e-4)
    assert out.max() == pytest.approx(band[1], abs=5e-4)


def _alternation_count(err: np.ndarray, level: float, rtol: float) -> int:
    """Number of alternating-sign points where |err| reaches ``level`` (to relative ``rtol``)."""
    count, last_sign = 0, 0.0
    for e in err[np.abs(err) >= level * (1.0 - rtol)]:
        if np.sign(e) != last_sign:
            count, last_sign = count + 1, np.sign(e)
    return count


@settings(max_examples=10, deadline=None)
@given(l=st.floats(1e-6, 0.5), degree=st.sampled_from([3, 5, 7]))
def test_each_step_equioscillates_without_cushion_or_safety(l: float, degree: int) -> None:
    coefficients = optimal_coefficients(l, 4, degree=degree)
    lo, hi = l, 1.0
    for step in coefficients:
        x = np.geomspace(lo, hi, 200001)
        err = 1.0 - apply_polynomials([step], x)
        level = np.abs(err).max()
        if level < 1e-9:  # rounding (~1e-16) would blur the extrema at this level
            break
        # The minimax error is attained at l (and u), where the levelled error is exact.
        assert abs(err[0]) == pytest.approx(level, rel=1e-9)
        assert _alternation_count(err, level, rtol=1e-6) == degree // 2 + 2
        lo = float(apply_polynomials([step], lo))
        hi = 2.0 - lo
        assert hi - 1.0 == pytest.approx(level, rel=1e-9)  # the image of [l, u] is [1 - E, 1 + E]


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_cushioned_steps_are_recentred(degree: int) -> None:
    coefficients = optimal_coefficients(1e-3, 4, degree=degree, cushion=0.1)
    lo, hi = 1e-3, 1.0
    for step in coefficients:
        image = apply_polynomials([step], np.linspace(lo, hi, 200001))
        # Centred on 1 over the true interval: min p + max p = 2 (p(l) + p(u) = 2 for degree 5).
        assert image.min() + image.max() == pytest.approx(2.0, abs=1e-9)
        assert image.min() == pytest.approx(float(apply_polynomials([step], lo)), rel=1e-12)
        lo = float(image.min())
        hi = 2.0 - lo
    # The cushion's point: p(x) / x stays away from 0 on the first (widest) interval (measured: about
    # 0.49-0.97 with cushion 0.1 against 0.005-0.012 without).
    x = np.geomspace(1e-3, 1.0, 10001)
    plain = optimal_coefficients(1e-3, 1, degree=degree)
    ratio_cushioned = (apply_polynomials(coefficients[:1], x) / x).min()
    assert ratio_cushioned > 10 * (apply_polynomials(plain, x) / x).min()


def test_safety_factor_skips_the_last_step() -> None:
    plain = optimal_coefficients(0.01, 3, cushion=0.02)
    safe = optimal_coefficients(0.01, 3, cushion=0.02, safety=1.05)
    f = 1.05
    assert safe[0] == pytest.approx(tuple(c / f ** (2 * i + 1) for i, c in enumerate(plain[0])), rel=1e-12)
    # A one-step schedule's only step is its last: no safety factor.
    assert optimal_coefficients(0.01, 1, safety=1.05) == optimal_coefficients(0.01, 1)
    # The point of it: a singular value that rounding pushed to f (above 1) maps as 1 did unsafe.
    assert apply_polynomials(safe[:1], f) == pytest.approx(apply_polynomials(plain[:1], 1.0), rel=1e-12)
    assert with_safety(plain, f)[0] == safe[0] and with_safety(plain, f)[-1] == plain[-1]


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_newton_schulz_limit_is_maximally_flat_at_one(degree: int) -> None:
    limit = NEWTON_SCHULZ_LIMITS[degree]
    assert len(limit) == degree // 2 + 1
    poly = np.polynomial.Polynomial([0.0 if k % 2 == 0 else limit[k // 2] for k in range(degree + 1)])
    assert poly(1.0) == pytest.approx(1.0, abs=1e-15)
    for order in range(1, degree // 2 + 1):  # p'(1) = ... = p^(d)(1) = 0
        assert poly.deriv(order)(1.0) == pytest.approx(0.0, abs=1e-12)
    # Once the interval has collapsed onto 1 the step is the limit itself, bit for bit.
    assert optimal_coefficients(1.0, 2, degree=degree) == [limit, limit]


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_degrees_converge_and_track_their_error(degree: int) -> None:
    l0, target = 1e-3, 1e-3
    coefficients = optimal_coefficients(l0, 14, degree=degree)
    x = np.geomspace(l0, 1.0, 20001)
    worst = [float(np.abs(1.0 - apply_polynomials(coefficients[: k + 1], x)).max()) for k in range(14)]
    # Greedy recursion: after k steps the worst error over [l0, 1] is 1 - l_k, computed independently.
    lo = l0
    for k, step in enumerate(coefficients):
        lo = float(apply_polynomials([step], lo))
        assert worst[k] == pytest.approx(1.0 - lo, rel=1e-6, abs=1e-13)
    assert all(b <= a + 1e-15 for a, b in zip(worst, worst[1:], strict=False)), "error must not grow"
    assert worst[-1] < target


def test_higher_degree_needs_fewer_steps() -> None:
    def steps_to(degree: int, l0: float = 1e-3, target: float = 1e-3) -> int:
        lo = l0
        for k, step in enumerate(optimal_coefficients(l0, 30, degree=degree), start=1):
            lo = float(apply_polynomials([step], lo))
            if 1.0 - lo < target:
                return k
        return math.inf

    n3, n5, n7 = steps_to(3), steps_to(5), steps_to(7)
    assert n7 <= n5 < n3 < math.inf
    # Degree 5 costs 3 matmuls a step, degree 3 costs 2: quintics must not cost more products.
    assert 3 * n5 <= 2 * n3


def test_remez_matches_closed_form_for_cubic_on_symmetric_case() -> None:
    # The minimax cubic a x + b x^3 for 1 on [l, 1] equioscillates at l, x* and 1; check against a
    # brute-force search on a fine grid of b (a is fixed by p(l) + p(1) = 2 at the optimum).
    l = 0.2
    (a, b), err = remez_odd(l, 1.0, 3)
    bs = np.linspace(b - 1e-3, b + 1e-3, 2001)
    xs = np.linspace(l, 1.0, 4001)
    best = np.inf
    for bb in bs:
        aa = (2.0 - bb * (l**3 + 1.0)) / (l + 1.0)
        best = min(best, np.abs(1.0 - (aa * xs + bb * xs**3)).max())
    assert err <= best + 1e-9
    assert err == pytest.approx(abs(1.0 - (a * l + b * l**3)), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"l": 0.0, "steps": 3}, "0.0"),
        ({"l": -0.5, "steps": 3}, "-0.5"),
        ({"l": 1.5, "steps": 3}, "1.5"),
        ({"l": float("nan"), "steps": 3}, "nan"),
        ({"l": 1e-3, "steps": 0}, "0"),
        ({"l": 1e-3, "steps": 2.5}, "2.5"),
        ({"l": 1e-3, "steps": 3, "degree": 4}, "4"),
        ({"l": 1e-3, "steps": 3, "cushion": 1.0}, "1.0"),
        ({"l": 1e-3, "steps": 3, "cushion": -0.1}, "-0.1"),
        ({"l": 1e-3, "steps": 3, "safety": 0.99}, "0.99"),
        ({"l": 1e-3, "steps": 3, "safety": float("inf")}, "inf"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=shown.replace(".", r"\.")):
        optimal_coefficients(**kwargs)
