"""g = ∇ₓ f_y and its norms against closed forms on hand-made models."""

from __future__ import annotations

import math

import pytest
import torch

from dvsguard.analyze.gradients import (
    f_true,
    gradient_norms,
    l0_norm,
    predicted_ratio,
    true_label_gradient,
    within_bounds,
)

from handmade import LinearLogits, QuadraticLogits

SHAPE = (3, 4, 2, 2, 2)  # T, B, C, H, W → m = 24 components per sample


def _linear_model(seed: int = 0, k: int = 3, sparse: bool = False) -> LinearLogits:
    gen = torch.Generator().manual_seed(seed)
    m = SHAPE[0] * SHAPE[2] * SHAPE[3] * SHAPE[4]
    w = torch.randn(k, m, generator=gen, dtype=torch.float64)
    if sparse:
        w[:, 5:] = 0.0  # only the first five components of every class weight are non-zero
    return LinearLogits(w, torch.randn(k, generator=gen, dtype=torch.float64))


def _expected(model: LinearLogits, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed form: ỹ, f_y = σ(u) and g = σ(u)(1−σ(u))(w_y − w_ỹ) as ``[B, m]``."""
    rows = x.transpose(0, 1).reshape(x.shape[1], -1)
    z = rows @ model.weight.detach().t() + model.bias.detach()
    masked = z.clone()
    masked[torch.arange(len(y)), y] = -math.inf
    wrong = masked.argmax(dim=1)
    u = z[torch.arange(len(y)), y] - z[torch.arange(len(y)), wrong]
    s = torch.sigmoid(u)
    w = model.weight.detach()
    g = (s * (1 - s)).unsqueeze(1) * (w[y] - w[wrong])
    return wrong, s, g


def test_gradient_of_linear_logits_matches_closed_form() -> None:
    model = _linear_model()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    res = true_label_gradient(model, x, y)
    wrong, s, g = _expected(model, x, y)
    assert torch.equal(res.wrong, wrong)
    assert torch.allclose(res.f_y.double(), s, rtol=1e-12)
    assert res.g.shape == x.shape
    got = res.g.transpose(0, 1).reshape(4, -1)
    assert torch.allclose(got, g, rtol=1e-10, atol=1e-14)
    # f_true at the same point is the same probability
    assert torch.allclose(f_true(model, x, y, wrong).double(), s, rtol=1e-12)


def test_norms_and_ratio_exact_on_sparse_linear_model() -> None:
    model = _linear_model(seed=3, sparse=True)
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 0])
    res = true_label_gradient(model, x, y)
    _, _, g = _expected(model, x, y)
    n = gradient_norms(res.g, tol=0.0)
    assert torch.allclose(n.l1, g.abs().sum(1), rtol=1e-10)
    assert torch.allclose(n.l2, g.norm(dim=1), rtol=1e-10)
    assert torch.allclose(n.linf, g.abs().max(1).values, rtol=1e-10)
    assert n.l0.tolist() == [5, 5, 5, 5]
    assert n.size == 24
    # the ratio does not depend on the sigmoid factor: 3‖w_y − w_ỹ‖₁²/‖w_y − w_ỹ‖₂²
    w = model.weight.detach()
    d = w[y] - w[res.wrong]
    assert torch.allclose(n.ratio, 3 * d.abs().sum(1) ** 2 / d.pow(2).sum(1), rtol=1e-10)
    # Cauchy–Schwarz: 3 ≤ ratio ≤ 3‖g‖₀ holds for the exact count
    assert bool(within_bounds(n.ratio, n.l0).all())


def test_ratio_extremes() -> None:
    one_hot = torch.zeros(1, 1, 10)
    one_hot[0, 0, 3] = -2.5
    n = gradient_norms(one_hot, tol=0.0)
    assert n.ratio.item() == pytest.approx(3.0)
    flat = torch.full((1, 1, 10), 0.7)
    n = gradient_norms(flat, tol=0.0)
    assert n.ratio.item() == pytest.approx(30.0)  # = 3·‖g‖₀: the upper bound is attained
    assert bool(within_bounds(n.ratio, n.l0).all())
    assert not bool(within_bounds(torch.tensor([31.0]), torch.tensor([10])).any())
    assert not bool(within_bounds(torch.tensor([2.9]), torch.tensor([10])).any())


def test_l0_tolerance_relative_and_absolute() -> None:
    g = torch.tensor([1.0, 1e-3, 1e-7, 0.0, -0.5]).view(1, 1, 5)
    assert l0_norm(g, tol=0.0).item() == 4
    assert l0_norm(g, tol=1e-6).item() == 3  # 1e-7 < 1e-6·max
    assert l0_norm(g, tol=1e-2).item() == 2
    assert l0_norm(g, tol=1e-4, relative=False).item() == 3
    with pytest.raises(ValueError):
        l0_norm(g, tol=-1.0)


def test_zero_gradient_gives_nan_ratio_and_no_bound() -> None:
    g = torch.zeros(2, 3, 4)
    n = gradient_norms(g, tol=0.0)
    assert torch.isnan(n.ratio).all()
    assert not bool(within_bounds(n.ratio, n.l0).any())
    assert torch.isnan(predicted_ratio(torch.tensor([0.0]), torch.tensor([0.0]))).all()


def test_quadratic_model_gradient() -> None:
    a = 0.3
    model = QuadraticLogits(a)
    x = torch.rand(2, 3, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    res = true_label_gradient(model, x, y)
    rows = x.transpose(0, 1).reshape(3, -1)
    u = -a * rows.pow(2).sum(1)
    s = torch.sigmoid(u)
    expected = (s * (1 - s)).unsqueeze(1) * (-2 * a * rows)
    assert torch.allclose(res.g.transpose(0, 1).reshape(3, -1), expected, rtol=1e-10)
    assert res.wrong.tolist() == [1, 1, 1]
