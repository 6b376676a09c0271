"""Polar iterations: approximate polar(G) = U V^T with odd matrix polynomials.

Every method here applies, to X_0 = G / (||G||_F * prefactor + eps), a sequence of odd polynomials

    X_{k+1} = a_k X_k + b_k (X_k X_k^T) X_k + c_k (X_k X_k^T)^2 X_k (+ d_k (X_k X_k^T)^3 X_k for degree 7)

which acts on each singular value s of X_k as p_k(s) = a_k s + b_k s^3 + c_k s^5 (+ d_k s^7) and leaves
the singular vectors alone. The methods differ only in their coefficient tables:

- ``polar_express``: Amsel, Persson, Musco, Gower, "The Polar Express" (arXiv 2505.16932, ICLR 2026),
  the paper's 8-step table (minimax-optimal for l = 1e-3) with safety factor 1.01 on all but the last
  step and prefactor 1.01; default 5 steps, the paper's GPT-2 training setting.
- ``polar_express_5``: the 5-step list of modded-nanogpt / microsoft/dion (safety 1.02 already applied,
  prefactor 1.02, eps 1e-6).
- ``jordan``: Keller Jordan's Muon quintic (3.4445, -4.7750, 2.0315), also torch.optim.Muon's default.
- ``you``: Jiacheng You's five per-step quintics.
- ``newton_schulz``: the classical cubic (1.5, -0.5).
- ``svd``: the exact polar factor from a singular value decomposition.

All figures are from ../shared/reference/polar-express.md, which cites their sources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Coefficients = tuple[float, ...]

# Paper's Implementation 1, BEFORE the safety factor (polar-express.md, "Published coefficients").
_POLAR_EXPRESS_RAW: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# The paper divides the argument of every step but the last by f = 1.01: p(x / f).
_POLAR_EXPRESS_SAFETY = 1.01


def _with_safety(table: Sequence[Coefficients], f: float) -> tuple[Coefficients, ...]:
    """Replace p(x) by p(x / f) on every step but the last: coefficient of x^(2i+1) divided by f^(2i+1)."""
    scaled = [tuple(c / f ** (2 * i + 1) for i, c in enumerate(step)) for step in table[:-1]]
    return (*scaled, tuple(table[-1]))


@dataclass(frozen=True)
class PolarMethod:
    """One polynomial method: its per-step coefficients and how it normalises the input."""

    name: str
    coefficients: tuple[Coefficients, ...]  # repeated from the last tuple past the table's end
    prefactor: float  # X_0 = G / (||G||_F * prefactor + eps)
    eps: float
    default_steps: int


_METHODS: dict[str, PolarMethod] = {
    "polar_express": PolarMethod(
        "polar_express", _with_safety(_POLAR_EXPRESS_RAW, _POLAR_EXPRESS_SAFETY), 1.01, 1e-7, 5
    ),
    # modded-nanogpt / microsoft/dion: l = 1e-3, 5 steps, safety 1.02 already folded in; eps 1e-6.
    "polar_express_5": PolarMethod(
        "polar_express_5",
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        1.02,
        1e-6,
        5,
    ),
    # Keller Jordan's Muon and torch.optim.Muon: X / (||X||_F + 1e-7), 5 steps.
    "jordan": PolarMethod("jordan", ((3.4445, -4.7750, 2.0315),), 1.0, 1e-7, 5),
    "you": PolarMethod(
        "you",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        1.0,
        1e-7,
        5,
    ),
    "newton_schulz": PolarMethod("newton_schulz", ((1.5, -0.5),), 1.0, 1e-7, 5),
}

METHOD_NAMES: tuple[str, ...] = (*_METHODS, "svd")

MethodSpec = str | Sequence[Sequence[float]]


def polar_method(method: MethodSpec) -> PolarMethod:
    """Resolve a method name or a user-supplied list of odd-power coefficient tuples.

    A user list is taken as it is: no safety factor, prefactor 1, eps 1e-7, default steps = its length.
    """
    if isinstance(method, str):
        if method == "svd":
            raise ValueError("method 'svd' has no coefficient table")
        if method not in _METHODS:
            raise ValueError(f"unknown polar method {method!r}; expected one of {list(METHOD_NAMES)}")
        return _METHODS[method]
    table = tuple(tuple(float(c) for c in step) for step in method)
    if not table:
        raise ValueError("a user-supplied coefficient list must hold at least one step")
    for step in table:
        if not 2 <= len(step) <= 4:
            raise ValueError(
                f"each step needs 2, 3 or 4 odd-power coefficients (degree 3, 5 or 7), got {step!r}"
            )
        if not all(math.isfinite(c) for c in step):
            raise ValueError(f"coefficients must be finite, got {step!r}")
    return PolarMethod("custom", table, 1.0, 1e-7, len(table))


def polar_coefficients(method: MethodSpec) -> tuple[list[Coefficients], float, float]:
    """(per-step coefficients, prefactor, eps) of a method, as the contract in the README states."""
    spec = polar_method(method)
    return list(spec.coefficients), spec.prefactor, spec.eps


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    return a @ b


def _addmm(bias: Tensor, a: Tensor, b: Tensor, beta: float, alpha: float = 1.0) -> Tensor:
    """beta * bias + alpha * (a @ b), one fused kernel for 2-D and batched operands."""
    if a.ndim == 2:
        return torch.addmm(bias, a, b, beta=beta, alpha=alpha)
    return torch.baddbmm(bias, a, b, beta=beta, alpha=alpha)


def _polynomial_step(x: Tensor, coeffs: Coefficients) -> Tensor:
    """x <- p(x) for the odd polynomial with these coefficients; x is (batch?, m, n) with m <= n."""
    gram = _matmul(x, x.mT)  # (.., m, m): the small Gram matrix
    # Horner in the Gram matrix: B = c1 A + c2 A^2 + ... so that p(x) = c0 x + B x.
    if len(coeffs) == 2:
        poly = gram * coeffs[1]
    else:
        poly = _addmm(gram, gram, gram, beta=coeffs[-2], alpha=coeffs[-1])
        for c in reversed(coeffs[1:-2]):
            poly = _addmm(gram, gram, poly, beta=c)
    return _addmm(x, poly, x, beta=coeffs[0])  # (.., m, n)


def _svd_polar(x: Tensor) -> Tensor:
    """Exact U V^T (partial isometry on the numerical range); zero directions stay zero."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    smax = s.amax(dim=-1, keepdim=True)
    tol = smax * max(x.shape[-2:]) * torch.finfo(x.dtype).eps
    keep = (s > tol).to(x.dtype)  # (.., k)
    return (u * keep.unsqueeze(-2)) @ vh


def _check_input(G: Tensor, check_finite: bool) -> None:
    if G.ndim < 2:
        raise ValueError(
            f"orthogonalize needs a matrix or a batch of matrices (..., m, n), got shape {tuple(G.shape)}"
        )
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(G).all()):
        raise ValueError("orthogonalize got a non-finite input (NaN or Inf); pass check_finite=False to skip")


def orthogonalize(
    G: Tensor,
    method: MethodSpec = "polar_express",
    steps: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    *,
    check_finite: bool = True,
    torch_compatible: bool = False,
) -> Tensor:
    """Approximate the polar factor U V^T of G (..., m, n) with a polynomial iteration.

    Args:
        G: a matrix or a batch of matrices, shape (..., m, n).
        method: a name in ``METHOD_NAMES`` or a list of odd-power coefficient tuples, one per step.
        steps: number of iterations; ``None`` takes the method's default. Past the end of a table
            its last tuple is repeated.
        dtype: the precision the iteration runs in (bf16 is Muon's setting); the result is cast
            back to ``G.dtype``.
        check_finite: raise ``ValueError`` on NaN/Inf input. Skipped automatically while
            torch.compile traces (the check is data-dependent and would sync the GPU).
        torch_compatible: normalise exactly as torch.optim.Muon does (cast to ``dtype``, then
            divide by ``max(||X||_F, eps)`` computed in ``dtype``), so ``method="jordan"`` matches it
            bitwise; otherwise the norm is accumulated in float32 and the method's prefactor is used.

    Returns:
        A tensor of G's shape and dtype.
    """
    _check_input(G, check_finite)
    if method == "svd":
        if steps is not None:
            raise ValueError(f"method 'svd' is exact and takes no steps, got steps={steps}")
        work = torch.float64 if G.dtype == torch.float64 else torch.float32
        return _svd_polar(G.to(work)).to(G.dtype)
    spec = polar_method(method)
    n_steps = spec.default_steps if steps is None else steps
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")

    batch_shape = G.shape[:-2]
    x = G.to(dtype).reshape(-1, *G.shape[-2:]) if G.ndim > 3 else G.to(dtype)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT  # (.., n, m): keep the Gram matrix X X^T the small one
    if torch_compatible:
        # torch.optim.Muon reduces a 2-D matrix with norm() over all elements; keep that order.
        norm = x.norm() if x.ndim == 2 else x.norm(dim=(-2, -1), keepdim=True)
        x = x / norm.clamp(min=spec.eps)
    else:
        acc = torch.promote_types(dtype, torch.float32)  # accumulate low precision in float32
        norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=acc)
        x = x / (norm * spec.prefactor + spec.eps).to(dtype)
    table = spec.coefficients
    for k in range(n_steps):
        x = _polynomial_step(x, table[min(k, len(table) - 1)])
    if transposed:
        x = x.mT
    return x.reshape(*batch_shape, *G.shape[-2:]).to(G.dtype)
