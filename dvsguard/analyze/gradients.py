"""The true-label gradient ``g = ∇ₓ f_y`` and its norms (pure functions).

``f_y = sigmoid(z_y − z_ỹ)`` is the two-class probability of the sparsity-regularization loss
(Eq. 9 of Liu et al., ICML 2024): the true class ``y`` against the strongest wrong class ``ỹ``,
``ỹ`` chosen at the clean input and kept fixed for shifted inputs (as in training).

Shapes: frames ``x`` ``[T, B, C, H, W]`` (time first, frame units), labels ``y`` ``[B]``,
logits ``[B, K]``; a gradient ``g`` has the shape of ``x`` and per-sample quantities are ``[B]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dvsguard.train.losses import margin_probability, true_vs_strongest_wrong

Model = Callable[[Tensor], Tensor]

DEFAULT_L0_TOL = 1e-6
"""Default tolerance of ‖g‖₀: a component counts when ``|g_i| > tol · max_j |g_j|`` (per sample)."""


@dataclass(frozen=True)
class TrueLabelGradient:
    """``g`` ``[T, B, ...]`` (= ∇ₓ f_y), ``f_y`` ``[B]``, ``wrong`` ``[B]`` (ỹ) and ``logits`` ``[B, K]``, all detached."""

    g: Tensor
    f_y: Tensor
    wrong: Tensor
    logits: Tensor


def true_label_gradient(model: Model, x: Tensor, y: Tensor) -> TrueLabelGradient:
    """``∇ₓ f_y`` per sample, with ``f_y = sigmoid(z_y − z_ỹ)`` and ỹ the strongest wrong class at ``x``.

    Samples are independent in the model (eval mode), so the gradient of ``Σ_b f_y[b]`` with
    respect to ``x`` holds each sample's own gradient in its slice ``[:, b]``. The model's mode
    is not changed; call it in eval mode. ``x`` is not modified.
    """
    x0 = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x0)
        wrong, f_y = true_vs_strongest_wrong(logits, y)
        (g,) = torch.autograd.grad(f_y.sum(), x0, allow_unused=True)
    if g is None:  # f_y does not depend on x
        g = torch.zeros_like(x0)
    return TrueLabelGradient(g.detach(), f_y.detach(), wrong.detach(), logits.detach())


@torch.no_grad()
def f_true(model: Model, x: Tensor, y: Tensor, wrong: Tensor) -> Tensor:
    """``f_y(x) = sigmoid(z_y − z_ỹ)`` ``[B]`` for a fixed wrong class ``wrong`` ``[B]``."""
    return margin_probability(model(x), y, wrong).detach()


def per_sample(g: Tensor) -> Tensor:
    """``g`` ``[T, B, ...]`` as ``[B, m]`` (one row of m = T·C·H·W components per sample), float64."""
    return g.detach().transpose(0, 1).reshape(g.shape[1], -1).double()


def l0_norm(g: Tensor, tol: float = DEFAULT_L0_TOL, relative: bool = True) -> Tensor:
    """‖g‖₀ per sample ``[B]`` (int64): the number of components with ``|g_i| > tol·max|g|``.

    With ``relative=False`` the threshold is ``|g_i| > tol`` (absolute, in f_y per frame unit).
    ``tol=0`` counts every non-zero component (then Cauchy–Schwarz guarantees
    ``‖g‖₁² ≤ ‖g‖₀·‖g‖₂²`` exactly).
    """
    if tol < 0:
        raise ValueError(f"‖g‖₀ tolerance must be >= 0, got {tol}")
    a = per_sample(g).abs()
    if relative:
        threshold = tol * a.max(dim=1, keepdim=True).values
    else:
        threshold = torch.full((a.shape[0], 1), float(tol), dtype=a.dtype)
    return (a > threshold).sum(dim=1)


def predicted_ratio(l1: Tensor, l2: Tensor) -> Tensor:
    """The Taylor prediction of ρ_adv/ρ_rand (Eq. 21): ``3·‖g‖₁²/‖g‖₂²`` ``[B]``; NaN where g = 0."""
    l1 = l1.double()
    l2 = l2.double()
    ratio = 3.0 * l1.pow(2) / l2.pow(2)
    return torch.where(l2 > 0, ratio, torch.full_like(ratio, float("nan")))


def within_bounds(ratio: Tensor, l0: Tensor, rtol: float = 1e-9) -> Tensor:
    """``3 ≤ ratio ≤ 3·‖g‖₀`` per sample ``[B]`` (bool), with a relative slack ``rtol`` for rounding.

    NaN ratios (g = 0 or ρ_rand = 0) give False.
    """
    ratio = ratio.double()
    lo = 3.0 * (1.0 - rtol)
    hi = 3.0 * l0.double() * (1.0 + rtol)
    return (ratio >= lo) & (ratio <= hi)


@dataclass(frozen=True)
class GradientNorms:
    """Per-sample norms of g, ``[B]`` each: ‖g‖₁, ‖g‖₂, ‖g‖∞, ‖g‖₀ (at ``tol``), m, and 3‖g‖₁²/‖g‖₂²."""

    l1: Tensor
    l2: Tensor
    linf: Tensor
    l0: Tensor
    size: int
    ratio: Tensor
    tol: float
    relative: bool


def gradient_norms(g: Tensor, tol: float = DEFAULT_L0_TOL, relative: bool = True) -> GradientNorms:
    """All norms of ``g`` ``[T, B, ...]`` per sample (float64; ‖g‖₀ int64) and the predicted ratio."""
    rows = per_sample(g)
    l1 = rows.abs().sum(dim=1)
    l2 = rows.pow(2).sum(dim=1).sqrt()
    return GradientNorms(
        l1=l1,
        l2=l2,
        linf=rows.abs().max(dim=1).values if rows.shape[1] else torch.zeros(rows.shape[0], dtype=rows.dtype),
        l0=l0_norm(g, tol, relative),
        size=int(rows.shape[1]),
        ratio=predicted_ratio(l1, l2),
        tol=float(tol),
        relative=bool(relative),
    )
