"""Training losses: cross-entropy and the gradient-sparsity regularizer (pure functions).

Shapes: inputs ``x`` are frames ``[T, B, 2, H, W]`` (float, frame units, nominally in
``[0, 1]``), labels ``y`` are ``[B]`` int64 and logits ``[B, K]``.

The regularizer is Algorithm 1 of Liu et al. (ICML 2024): with ``f_y = sigmoid(z_y - z_ỹ)``,
the probability of the true class against the strongest wrong class ``ỹ`` (chosen at ``x`` and
kept for the shifted input), ``d = sign(∇ₓ f_y)`` and step ``h``, the term is the finite
difference ``(f_y(x + h·d) - f_y(x)) / h``, an estimate of ``‖∇ₓ f_y‖₁``. ``d`` is a constant
(no double back-propagation); the parameter gradients flow through both forward passes.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

SR_FORMS = ("sq", "abs")
SrForm = Literal["sq", "abs"]
Model = Callable[[Tensor], Tensor]


def _full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 when it is in a reduced precision (bf16/fp16 under autocast)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits [B, K]`` against labels ``y [B]`` (a scalar)."""
    return F.cross_entropy(_full_precision(logits), y)


def strongest_wrong(logits: Tensor, y: Tensor) -> Tensor:
    """Index ``[B]`` of the largest logit other than the true class ``y``."""
    masked = _full_precision(logits.detach()).clone()
    masked.scatter_(1, y.unsqueeze(1), float("-inf"))
    return masked.argmax(dim=1)


def margin_probability(logits: Tensor, y: Tensor, wrong: Tensor) -> Tensor:
    """``f_y = e^{z_y} / (e^{z_y} + e^{z_ỹ}) = sigmoid(z_y - z_ỹ)`` per sample, ``[B]``."""
    z = _full_precision(logits)
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    z_w = z.gather(1, wrong.unsqueeze(1)).squeeze(1)
    return torch.sigmoid(z_y - z_w)


def true_vs_strongest_wrong(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(ỹ [B], f_y [B])``: the strongest wrong class and the true-vs-it probability.

    ``f_y`` keeps its graph to ``logits``; ``ỹ`` is an index chosen without gradient.
    """
    wrong = strongest_wrong(logits, y)
    return wrong, margin_probability(logits, y, wrong)


def finite_difference_penalty(f_x: Tensor, f_shift: Tensor, h: float, form: SrForm) -> Tensor:
    """Reduce the per-sample difference quotient ``q = (f_shift - f_x) / h`` to a scalar.

    ``form="abs"``: ``mean |q|`` (the paper's Eq. 14); ``form="sq"``: ``mean q²`` (the
    authors' released training code, which produced their tables).
    """
    q = (f_shift - f_x) / h
    if form == "abs":
        return q.abs().mean()
    if form == "sq":
        return q.pow(2).mean()
    raise ValueError(f"sparsity regularizer form {form!r} is unknown; expected one of {SR_FORMS}")


def sparsity_regularizer(
    model: Model,
    x: Tensor,
    y: Tensor,
    h: float = 0.01,
    form: SrForm = "sq",
) -> tuple[Tensor, Tensor]:
    """The gradient-sparsity term ``R`` of Algorithm 1 and the logits at ``x``.

    Two forward passes of ``model`` (in whatever mode it is in): one at ``x`` whose logits are
    returned for the cross-entropy term, one at ``x + h·d`` with ``d = sign(∇ₓ f_y(x))``
    (``x + h·d`` is not clipped to the value range, as in the released code: it is a
    difference quotient, not an input to classify). ``d`` is computed by
    ``torch.autograd.grad`` on the first pass's graph without ``create_graph``; the graph is
    retained so that the caller's ``backward`` reaches the weights through both passes.

    Args:
        model: maps ``x [T, B, 2, H, W]`` to logits ``[B, K]``.
        x: input frames ``[T, B, 2, H, W]``; it is not modified.
        y: labels ``[B]``.
        h: finite-difference step in frame units (0.01 in the paper).
        form: ``"sq"`` or ``"abs"`` (see :func:`finite_difference_penalty`).

    Returns:
        ``(R, logits_x)``: the scalar regularizer and the logits ``[B, K]`` at ``x``.
    """
    if form not in SR_FORMS:
        raise ValueError(f"sparsity regularizer form {form!r} is unknown; expected one of {SR_FORMS}")
    if h <= 0:
        raise ValueError(f"finite-difference step h must be > 0, got {h}")
    x0 = x.detach().requires_grad_(True)
    logits = model(x0)
    wrong, f_x = true_vs_strongest_wrong(logits, y)
    (grad_x,) = torch.autograd.grad(f_x.sum(), x0, retain_graph=True)
    direction = grad_x.sign()
    x_shift = x.detach() + h * direction
    f_shift = margin_probability(model(x_shift), y, wrong)
    return finite_difference_penalty(f_x, f_shift, h, form), logits
