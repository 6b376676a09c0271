"""Spectral statistics of weight matrices, their updates and Muon's polar step.

Pure functions on tensors, no Lightning: ``SpectralDiagnostics`` calls them on the matrices it
samples. Every SVD runs in float32 on the tensor's own device.

Definitions (``s`` are the singular values of a matrix ``A``, largest first):

- stable rank: ``||A||_F^2 / ||A||_2^2 = sum(s^2) / s_max^2`` (between 1 and rank(A)).
- effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007): ``exp(H(p))`` with ``p = s / sum(s)`` (the L1 normalisation of that paper, not
  ``s^2 / sum(s^2)``) and ``H`` the Shannon entropy in nats, ``0 log 0 = 0``.
- update RMS ratio: ``rms(dW) / rms(W)``.
- power-law tail exponent ``alpha``: the eigenvalues ``lambda = s^2`` of ``W^T W`` (the empirical
  spectral density) are fitted by ``p(lambda) ~ lambda^-alpha`` for ``lambda >= x_min``, with the
  continuous maximum-likelihood (Hill) estimator and ``x_min`` chosen to minimise the
  Kolmogorov-Smirnov distance (Clauset, Shalizi & Newman, "Power-law distributions in empirical
  data", SIAM Review 2009, eqs. 3.1 and 3.9-3.10).
- polar error: see :func:`polar_error_stats`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

# Muon's relevant directions: singular values above this fraction of the largest. The polar
# iterations are built for [1e-3, 1] (Polar Express's l = 1e-3: below it bf16 rounding dominates,
# see shared/reference/polar-express.md); smaller ones stay near 0 for every method.
POLAR_RELATIVE_THRESHOLD = 1e-3
# Clauset et al. (2009), sec. 3.3: the KS scan needs enough points above x_min for the MLE to be
# meaningful; their Fig. 3 shows the estimator's bias is small from n_tail ~ 50 on.
MIN_TAIL = 50
# Upper bound on candidate x_min values scanned: the KS scan costs O(candidates * n) memory/time.
MAX_XMIN_CANDIDATES = 256


def as_matrix(t: Tensor) -> Tensor:
    """View a parameter as a matrix: 2-D unchanged, (out, ...) conv kernels flattened to (out, -1).

    Raises:
        ValueError: if ``t`` has fewer than 2 dimensions.
    """
    if t.dim() < 2:
        raise ValueError(f"expected a tensor with >= 2 dims, got shape {tuple(t.shape)}")
    return t if t.dim() == 2 else t.reshape(t.shape[0], -1)


@contextlib.contextmanager
def _lapack_threads(t: Tensor) -> Iterator[None]:
    """Run CPU LAPACK calls on one thread.

    MKL's multithreaded eigensolvers spin-wait on small matrices: measured here on 2 cores with other
    work running, eigvalsh of a 256x256 matrix took 5.6 s on 2 threads and 0.011 s on 1 (same call,
    same run). The eigenproblems here are at most min(m, n) wide, so one thread costs little.
    """
    if t.device.type != "cpu":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


SV_METHODS = ("gram", "svd")


def singular_values(t: Tensor, method: str = "gram") -> Tensor:
    """Singular values of one matrix in float32, descending, on the tensor's device.

    A tensor with more than 2 dims is treated as one matrix ``(shape[0], -1)`` (a conv kernel); for a
    batch of matrices use :func:`batched_singular_values`.

    Args:
        t: the matrix.
        method: ``"gram"`` (default): ``sqrt(eigvalsh(A^T A))`` on the smaller side's Gram matrix,
            formed and solved in float64 from the float32 values (in float32, squaring would bury
            singular values below ~3e-4 of the largest in rounding noise and inflate the effective
            rank of low-rank matrices); one matmul and a symmetric eigensolver, much faster than an
            SVD for wide matrices on CPU (recipes/spectral_overhead/RESULTS.md). ``"svd"``:
            :func:`torch.linalg.svdvals` in float32.
    """
    if method not in SV_METHODS:
        raise ValueError(f"method must be one of {SV_METHODS}, got {method!r}")
    m = as_matrix(t.detach()).float()  # (m, n)
    if method == "svd":
        with _lapack_threads(m):
            return torch.linalg.svdvals(m)  # (min(m, n),)
    a = m.double()
    gram = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T  # (k, k), k = min(m, n)
    with _lapack_threads(gram):
        eig = torch.linalg.eigvalsh(gram)  # (k,) ascending
    return eig.flip(0).clamp_min(0.0).sqrt().float()


def batched_singular_values(t: Tensor) -> Tensor:
    """Singular values of a batch ``(blocks, m, n)`` in float32: ``(blocks, min(m, n))``."""
    if t.dim() != 3:
        raise ValueError(f"expected (blocks, m, n), got shape {tuple(t.shape)}")
    with _lapack_threads(t):
        return torch.linalg.svdvals(t.detach().float())


def stable_rank(s: Tensor) -> float:
    """``sum(s^2) / max(s)^2``; 0 for a zero matrix."""
    s = s.double()
    top = s.max()
    if top <= 0:
        return 0.0
    return float((s / top).square().sum())


def effective_rank(s: Tensor) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(-sum p log p)``, ``p = s / sum(s)``; 0 for zero."""
    s = s.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()
    return float(torch.exp(entropy))


def rms(t: Tensor) -> float:
    """Root mean square of all entries, accumulated in float64 from float32."""
    return float(t.detach().float().double().square().mean().sqrt())


def update_rms_ratio(update: Tensor, weight: Tensor) -> float:
    """``rms(update) / rms(weight)``; ``inf`` for a zero weight with a nonzero update, 0 if both are 0."""
    if update.shape != weight.shape:
        raise ValueError(f"update shape {tuple(update.shape)} != weight shape {tuple(weight.shape)}")
    num, den = rms(update), rms(weight)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def spectral_norm(s: Tensor) -> float:
    """Largest singular value."""
    return float(s.max())


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`power_law_alpha`: exponent, tail start, KS distance, tail size."""

    alpha: float
    xmin: float
    ks: float
    n_tail: int


def _fit_at(x: Tensor, idx: Tensor, log_suffix: Tensor) -> tuple[Tensor, Tensor]:
    """Hill MLE and KS distance for each candidate start index in ``idx`` (x sorted ascending)."""
    n = x.numel()
    n_tail = (n - idx).to(x.dtype)  # (C,)
    log_xmin = torch.log(x[idx])  # (C,)
    sum_log = log_suffix[idx] - n_tail * log_xmin  # (C,) sum over tail of log(x / xmin)
    # Clauset et al. eq. 3.1: alpha = 1 + n_tail / sum log(x_i / x_min).
    alpha = 1.0 + n_tail / sum_log.clamp_min(torch.finfo(x.dtype).tiny)  # (C,)
    j = torch.arange(n, device=x.device)  # (n,)
    rel = j[None, :] - idx[:, None]  # (C, n) position within each tail
    in_tail = rel >= 0
    ratio = torch.exp(torch.log(x)[None, :] - log_xmin[:, None])  # (C, n) x / xmin
    model_cdf = 1.0 - ratio.pow(1.0 - alpha[:, None])  # (C, n)
    # The empirical CDF jumps at each sample: compare the model with both sides of the step.
    emp_hi = (rel + 1).to(x.dtype) / n_tail[:, None]
    emp_lo = rel.to(x.dtype) / n_tail[:, None]
    gap = torch.maximum((emp_hi - model_cdf).abs(), (emp_lo - model_cdf).abs())
    ks = torch.where(in_tail, gap, torch.zeros_like(gap)).amax(dim=1)  # (C,)
    return alpha, ks


def power_law_alpha(
    eigenvalues: Tensor,
    *,
    min_tail: int = MIN_TAIL,
    max_candidates: int = MAX_XMIN_CANDIDATES,
) -> PowerLawFit:
    """Fit ``p(lambda) ~ lambda^-alpha`` to the upper tail of positive samples (Clauset et al. 2009).

    For each candidate ``x_min`` (sample values leaving at least ``min_tail`` points above, at most
    ``max_candidates`` of them spread evenly in rank) the exponent is the continuous MLE
    ``1 + n / sum(log(x / x_min))`` and the chosen ``x_min`` is the one whose fitted CDF is closest to
    the tail's empirical CDF in Kolmogorov-Smirnov distance. Non-positive samples are dropped.

    Args:
        eigenvalues: 1-D samples, e.g. the eigenvalues of ``W^T W`` (squared singular values of W).
        min_tail: smallest tail size a candidate ``x_min`` may leave.
        max_candidates: most ``x_min`` values scanned.

    Returns:
        PowerLawFit with ``alpha = nan`` when fewer than ``min_tail`` positive samples exist.

    Raises:
        ValueError: on a non-1-D input or a ``min_tail`` below 2 / ``max_candidates`` below 1.
    """
    if eigenvalues.dim() != 1:
        raise ValueError(f"eigenvalues must be 1-D, got shape {tuple(eigenvalues.shape)}")
    if min_tail < 2:
        raise ValueError(f"min_tail must be >= 2, got {min_tail}")
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
    x = eigenvalues.detach().double()
    x = torch.sort(x[x > 0]).values  # (n,) ascending
    n = x.numel()
    if n < min_tail:
        return PowerLawFit(float("nan"), float("nan"), float("nan"), int(n))
    last = n - min_tail  # largest start index that leaves min_tail points
    count = min(max_candidates, last + 1)
    idx = torch.linspace(0, last, count, device=x.device).round().long().unique()  # (C,)
    # Ties: a candidate start must be the first occurrence of its value, or the tail is cut mid-tie.
    idx = torch.searchsorted(x, x[idx], right=False).unique()
    # The top `min_tail` values all equal: no spread to fit.
    idx = idx[x[idx] < x[-1]]
    if idx.numel() == 0:
        return PowerLawFit(float("nan"), float("nan"), float("nan"), int(n))
    log_x = torch.log(x)
    log_suffix = torch.flip(torch.cumsum(torch.flip(log_x, [0]), 0), [0])  # (n,) sum_{j>=i} log x_j
    alpha, ks = _fit_at(x, idx, log_suffix)
    best = int(torch.argmin(ks))
    start = int(idx[best])
    return PowerLawFit(float(alpha[best]), float(x[start]), float(ks[best]), int(n - start))


def esd_alpha(weight: Tensor, s: Tensor | None = None, **kwargs: int) -> float:
    """Tail exponent of the eigenvalues of ``W^T W`` (``s^2``); ``s`` may be passed if already known."""
    if s is None:
        s = singular_values(weight)
    return power_law_alpha(s.double().square(), **kwargs).alpha


@dataclass(frozen=True)
class PolarError:
    """Max and median of ``|s_i - 1|`` over the relevant directions, and how many there were."""

    max: float
    median: float
    n_directions: int


def projected_polar_values(
    inputs: Tensor, outputs: Tensor, threshold: float = POLAR_RELATIVE_THRESHOLD
) -> list[Tensor]:
    """Singular values of the polar output restricted to the input's relevant singular directions.

    For each block, ``M = U S V^T`` (input) keeps the ``k`` right singular directions ``V_k`` with
    ``s_i > threshold * s_1`` and returns the singular values of ``O V_k`` (``r x k``), ``O`` the
    output. If ``O`` is an odd polynomial of ``M`` (every polar iteration is), ``O V_k = U_k p(S_k)``
    and these are exactly ``p(s_i)``; a rotation of the output inside that subspace leaves them
    unchanged, rounding leakage out of ``U_k`` is counted, and directions the input does not have
    are ignored (every method maps them to ~0, which would read as an error of 1).

    ``V_k`` comes from the eigenvectors of ``M^T M`` in float64 (so the 1e-3 cut, a 1e-6 ratio of
    eigenvalues, is resolved); ``O V_k``'s singular values from the eigenvalues of its k x k Gram.

    Args:
        inputs: ``(blocks, r, c)`` or ``(r, c)`` polar inputs (momentum).
        outputs: orthogonalised outputs, same shape.
        threshold: relative cut-off on the input's singular values.

    Returns:
        One 1-D float32 tensor per block, descending (empty for a zero block).
    """
    if inputs.shape != outputs.shape:
        raise ValueError(f"input shape {tuple(inputs.shape)} != output shape {tuple(outputs.shape)}")
    if inputs.dim() not in (2, 3):
        raise ValueError(f"expected (r, c) or (blocks, r, c), got shape {tuple(inputs.shape)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    m = inputs.detach().double()
    o = outputs.detach().double()
    if m.dim() == 2:
        m, o = m[None], o[None]  # (1, r, c)
    if m.shape[1] < m.shape[2]:
        # Work on the smaller Gram: the transpose swaps U and V and keeps every singular value.
        m, o = m.mT, o.mT  # (B, c, r)
    with _lapack_threads(m):
        eig, vecs = torch.linalg.eigh(m.mT @ m)  # (B, k), (B, k, k) ascending; k = min(r, c)
    values = []
    for b in range(m.shape[0]):
        top = eig[b, -1]
        if top <= 0:
            values.append(eig.new_zeros(0, dtype=torch.float32))
            continue
        keep = eig[b] > (threshold**2) * top  # s_i > threshold * s_1
        proj = o[b] @ vecs[b][:, keep]  # (r, k')
        with _lapack_threads(proj):
            s2 = torch.linalg.eigvalsh(proj.mT @ proj)  # (k',)
        values.append(s2.flip(0).clamp_min(0.0).sqrt().float())
    return values


def polar_error_stats(
    inputs: Tensor, outputs: Tensor, threshold: float = POLAR_RELATIVE_THRESHOLD
) -> PolarError:
    """Max and median of ``|s_i - 1|`` over all blocks' relevant directions.

    ``s_i`` are the singular values of the output restricted to the input's singular directions
    above ``threshold`` of its largest (see :func:`projected_polar_values`). A perfect polar step
    gives 0; Jordan's 5-step Newton-Schulz leaves up to ~0.5, Polar Express ~0.16 in the worst case
    (shared/reference/polar-express.md). NaN when no block has a nonzero input.

    The worst cases are over singular values in [1e-3, 1] relative to the normalisation
    ``||M||_F * prefactor``, while this cut is relative to ``s_1 <= ||M||_F``. For a momentum of high
    stable rank ``s_1`` is several times smaller than ``||M||_F``, so kept directions can lie below
    the coefficients' design interval and show errors above 0.16 (0.3-0.4 with Polar Express in bf16
    GPT training): expected, not a defect of the step.
    """
    vals = projected_polar_values(inputs, outputs, threshold)
    err = torch.cat([(v - 1.0).abs() for v in vals]) if vals else torch.zeros(0)
    if err.numel() == 0:
        return PolarError(float("nan"), float("nan"), 0)
    # quantile interpolates: the true median for an even count (torch.median takes the lower one).
    return PolarError(float(err.max()), float(torch.quantile(err, 0.5)), int(err.numel()))
