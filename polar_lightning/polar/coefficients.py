"""Greedy minimax-optimal odd polynomials for the polar iteration (Polar Express), in float64.

Polar Express (Amsel, Persson, Musco, Gower, arXiv 2505.16932) picks, at every step t, the odd
polynomial p_t of a fixed degree that minimises max_{x in [l_t, u_t]} |1 - p_t(x)| on the interval
[l_t, u_t] currently known to hold the singular values; the image of that interval is
[p_t(l_t), 2 - p_t(l_t)] because the optimal error equioscillates around 1. The paper proves the
greedy composition is optimal among all compositions of that degree.

Each step is solved by the Remez exchange algorithm on the odd monomials x, x^3, ..., x^degree
(a Chebyshev system on (0, inf), so the minimax solution is unique and equioscillates on
degree // 2 + 2 points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["NEWTON_SCHULZ_LIMITS", "apply_polynomials", "optimal_coefficients", "remez_odd", "with_safety"]

# Maximally flat odd polynomials at x = 1: x * sum_{k<=d} C(2k, k) / 4^k (1 - x^2)^k, the Taylor
# truncation of x (x^2)^(-1/2) around 1 (Newton-Schulz of order d). They are the minimax limit as
# [l, u] shrinks to {1}; degree 5 is the paper's (15/8, -10/8, 3/8).
NEWTON_SCHULZ_LIMITS: dict[int, tuple[float, ...]] = {
    3: (3 / 2, -1 / 2),
    5: (15 / 8, -10 / 8, 3 / 8),
    7: (35 / 16, -35 / 16, 21 / 16, -5 / 16),
}

# Polar Express's official code switches to the Newton-Schulz limit when l / u is within 5e-6 of 1
# (reference file, "Finite-precision measures"): the Remez system is singular there.
_LIMIT_TOL = 5e-6
# Degree 7 hits that singularity earlier (measured: the Remez system is singular at l / u = 1 - 6e-6
# and its solution is noise below l / u = 1 - 2e-4), so we also switch once the limit's own error on
# [l, u] is at float64 roundoff, where no polynomial can do measurably better. For degree 5 this
# fires only within ~1.5e-5 of 1, after step 7 of the paper's table, which it leaves unchanged.
_LIMIT_ERR = 1e-15
# Remez stops once the levelled error E changes by at most this much between rounds, or once it
# matches the true maximum of |1 - p| to this much (reference file: "converges to |dE| <= 1e-15 in a
# few rounds"); the second test alone can stall a few ulps above it from rounding in p(u).
_REMEZ_TOL = 1e-15
_REMEZ_MAX_ROUNDS = 100


def apply_polynomials(coefficients: Sequence[Sequence[float]], x: np.ndarray | float) -> np.ndarray:
    """Apply the composition of odd polynomials to scalars, in float64.

    Args:
        coefficients: one tuple (a_1, a_3, a_5, ...) per step; step t maps x to sum_i a_{2i+1} x^{2i+1}.
        x: scalars (any shape); these play the role of the normalised singular values.

    Returns:
        The image of ``x`` after all steps, same shape as ``x``, float64.
    """
    y = np.asarray(x, dtype=np.float64)
    for step in coefficients:
        y = _odd_poly(step, y)
    return y


def with_safety(coefficients: Sequence[Sequence[float]], safety: float) -> list[tuple[float, ...]]:
    """Replace every step but the last by p(x / safety): the coefficient of x^(2i+1) over safety^(2i+1).

    This is how the paper turns its published table (computed without a safety factor) into the one
    it runs; :func:`optimal_coefficients` instead folds the factor in before updating [l, u].
    """
    if isinstance(safety, bool) or not isinstance(safety, (int, float)) or not (1.0 <= safety < math.inf):
        raise ValueError(f"safety must be a finite float >= 1, got {safety!r}")
    steps = [tuple(float(c) for c in step) for step in coefficients]
    scaled = [tuple(c / safety ** (2 * i + 1) for i, c in enumerate(step)) for step in steps[:-1]]
    return scaled + steps[-1:]


def _odd_poly(coefficients: Sequence[float], x: np.ndarray) -> np.ndarray:
    # Horner in x^2, then one multiplication by x: p(x) = x * (a_1 + x^2 (a_3 + x^2 (...))).
    x2 = x * x
    acc = np.zeros_like(x) + coefficients[-1]
    for a in reversed(coefficients[:-1]):
        acc = acc * x2 + a
    return acc * x


def remez_odd(l: float, u: float, degree: int) -> tuple[tuple[float, ...], float]:
    """Minimax odd polynomial approximation of 1 on [l, u] by the Remez exchange algorithm.

    Args:
        l: left end of the interval, 0 < l < u.
        u: right end of the interval.
        degree: odd degree of the polynomial (3, 5 or 7).

    Returns:
        (coefficients of x, x^3, ..., x^degree; the minimax error max |1 - p(x)| on [l, u]).
    """
    n = degree // 2 + 1  # number of odd-power coefficients
    powers = np.arange(n) * 2 + 1  # (n,)
    signs = (-1.0) ** np.arange(n + 1)  # (n + 1,): 1 - p alternates, positive at l
    # Chebyshev extrema on [l, u] as the first reference: the classical Remez start.
    ref = 0.5 * (l + u) - 0.5 * (u - l) * np.cos(np.pi * np.arange(n + 1) / n)  # (n + 1,)
    coef = np.zeros(n)
    err = math.inf
    prev_err = math.inf
    for _ in range(_REMEZ_MAX_ROUNDS):
        # Solve p(x_j) + (-1)^j E = 1 for the n coefficients and the levelled error E.
        system = np.column_stack([ref[:, None] ** powers[None, :], signs])  # (n + 1, n + 1)
        sol = np.linalg.solve(system, np.ones(n + 1))
        coef, err = sol[:n], sol[n]
        new_ref = _error_extrema(coef, l, u)
        if new_ref is None:
            # Never observed for degrees 3-7, l in [1e-12, 1), any cushion: starting from the
            # Chebyshev reference, p' always has its degree // 2 roots inside (l, u).
            raise RuntimeError(f"Remez exchange lost the alternation on [{l!r}, {u!r}] for degree {degree}")
        max_err = np.max(np.abs(1.0 - _odd_poly(tuple(coef), new_ref)))
        ref = new_ref
        if abs(abs(err) - prev_err) <= _REMEZ_TOL or max_err - abs(err) <= _REMEZ_TOL:
            break
        prev_err = abs(err)
    else:
        raise RuntimeError(f"Remez exchange did not converge on [{l!r}, {u!r}] for degree {degree}")
    return tuple(float(c) for c in coef), float(abs(err))


def _max_on(coef: np.ndarray, l: float, u: float) -> float:
    """max of the odd polynomial p over [l, u]: at u or at a critical point inside."""
    inner = _error_extrema(coef, l, u)
    points = np.array([u]) if inner is None else inner[1:]
    return float(_odd_poly(tuple(coef), points).max())


def _error_extrema(coef: np.ndarray, l: float, u: float) -> np.ndarray | None:
    """The reference for the next round: l, the critical points of p inside (l, u), and u.

    Returns None when p' does not have exactly len(coef) - 1 roots in (l, u).
    """
    n = len(coef)
    # p'(x) = sum_i (2i + 1) a_{2i+1} x^{2i}: a polynomial of degree n - 1 in y = x^2.
    dcoef = coef * (np.arange(n) * 2 + 1)  # (n,), increasing powers of y
    roots = np.roots(dcoef[::-1])
    real = np.sort(roots[np.abs(roots.imag) <= 1e-12 * np.abs(roots)].real)
    inside = real[(real > l * l) & (real < u * u)]
    if inside.size != n - 1:
        return None
    return np.concatenate([[l], np.sqrt(inside), [u]])


def optimal_coefficients(
    l: float, steps: int, degree: int = 5, cushion: float = 0.0, safety: float = 1.0
) -> list[tuple[float, ...]]:
    """Greedy minimax-optimal odd polynomials for ``steps`` polar-iteration steps (Polar Express).

    Step t solves the minimax problem on [max(l_t, cushion * u_t), u_t]; when the cushion is active
    the polynomial is rescaled so that its image of [l_t, u_t] is centred on 1: p(l_t) + max p = 2,
    which is the paper's p(l_t) + p(u_t) = 2 for degree 5 (whose maximum 1 + E sits at u_t; for
    degrees 3 and 7 the error has the same sign at both ends and the maximum is interior);
    every step but the last is replaced by p(x / safety); then l_{t+1} = p_t(l_t),
    u_{t+1} = 2 - l_{t+1}. Once l_t / u_t is within 5e-6 of 1 the step is the Newton-Schulz limit of
    ``degree`` (:data:`NEWTON_SCHULZ_LIMITS`), taken literally. With l = 1e-3, 8 steps and
    cushion = 0.02407327424182761 this gives the paper's published table; with l = 1e-3, 5 steps,
    cushion = 0.02, safety = 1.02 the list used by modded-nanogpt and Dion.

    Args:
        l: lower bound on the normalised singular values, 0 < l <= 1 (the upper bound starts at 1).
        steps: number of polynomials, >= 1.
        degree: odd degree of each polynomial: 3, 5 or 7 (1, 2 or 3 Gram-matrix products per step).
        cushion: solve on [max(l_t, cushion * u_t), u_t]; 0 <= cushion < 1 (paper: 0.024 / 0.02).
        safety: factor f >= 1; all steps but the last become p(x / f) so that singular values
            slightly above 1 after rounding are not amplified (paper: 1.01 / 1.02).

    Returns:
        One tuple per step of the odd-power coefficients (a_1, a_3, ..., a_degree), float.

    Raises:
        ValueError: if an argument is out of range.
    """
    if isinstance(l, bool) or not isinstance(l, (int, float)) or not (0.0 < l <= 1.0):
        raise ValueError(f"l must be a float in (0, 1], got {l!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(degree, bool) or degree not in NEWTON_SCHULZ_LIMITS:
        raise ValueError(f"degree must be one of {sorted(NEWTON_SCHULZ_LIMITS)}, got {degree!r}")
    if isinstance(cushion, bool) or not isinstance(cushion, (int, float)) or not (0.0 <= cushion < 1.0):
        raise ValueError(f"cushion must be a float in [0, 1), got {cushion!r}")
    if isinstance(safety, bool) or not isinstance(safety, (int, float)) or not (1.0 <= safety < math.inf):
        raise ValueError(f"safety must be a finite float >= 1, got {safety!r}")

    lo, hi = float(l), 1.0
    out: list[tuple[float, ...]] = []
    for t in range(steps):
        limit = NEWTON_SCHULZ_LIMITS[degree]
        # The limit's error is largest at the ends: p' = c (1 - x^2)^(degree // 2) near 1.
        limit_err = max(abs(1.0 - _odd_poly(limit, np.float64(x))) for x in (lo, hi))
        if lo / hi >= 1.0 - _LIMIT_TOL or limit_err <= _LIMIT_ERR:
            coef = np.array(limit)
        else:
            solve_lo = max(lo, cushion * hi)
            coef = np.array(remez_odd(solve_lo, hi, degree)[0])
            if solve_lo > lo:
                # The cushioned solution is centred on 1 over [cushion * u, u]; recentre over [l, u].
                coef = coef * (2.0 / (_odd_poly(tuple(coef), np.float64(lo)) + _max_on(coef, lo, hi)))
        if t < steps - 1 and safety != 1.0:
            coef = coef / float(safety) ** (np.arange(len(coef)) * 2 + 1)
        out.append(tuple(float(c) for c in coef))
        lo = float(_odd_poly(out[-1], np.float64(lo)))
        hi = 2.0 - lo
        lo = min(lo, hi)
    return out
