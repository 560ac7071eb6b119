"""Gradient modes: parsing, and each surrogate's value against the paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dvsguard.errors import ConfigError
from dvsguard.snn.surrogate import (
    ATAN,
    PAPER_ENSEMBLE,
    RGA,
    SIGMOID,
    SURROGATES,
    TRIANGLE,
    GradientMode,
    Surrogate,
    rate_grad,
    surrogate_grad,
)

U = [-3.0, -1.0, -0.75, -0.2, 0.0, 0.1, 0.5, 0.999, 1.0, 1.3, 2.0, 2.5]  # membrane potentials, θ = 1


def test_defaults_match_the_paper() -> None:
    assert (TRIANGLE.kind, TRIANGLE.gamma) == ("triangle", 1.0)
    assert (SIGMOID.kind, SIGMOID.gamma) == ("sigmoid", 4.0)
    assert (ATAN.kind, ATAN.gamma) == ("atan", 2.0)
    assert RGA.kind == "rga"
    assert PAPER_ENSEMBLE == (TRIANGLE, SIGMOID, ATAN, RGA)


@pytest.mark.parametrize(
    ("text", "kind", "gamma"),
    [("sigmoid:4", "sigmoid", 4.0), ("atan", "atan", 2.0), ("triangle", "triangle", 1.0),
     ("Triangle:0.3", "triangle", 0.3), ("rga", "rga", 1.0)],
)
def test_parse(text: str, kind: str, gamma: float) -> None:
    mode = GradientMode.parse(text)
    assert (mode.kind, mode.gamma) == (kind, gamma)
    assert GradientMode.parse(str(mode)) == mode


@pytest.mark.parametrize("text", ["relu", "sigmoid:x", "atan:0", "triangle:-1", "triangle:nan", ""])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        GradientMode.parse(text)


def test_str_round_trip() -> None:
    assert str(SIGMOID) == "sigmoid:4"
    assert str(GradientMode("triangle", 0.5)) == "triangle:0.5"
    assert str(RGA) == "rga"


def _triangle(u: float, g: float) -> float:
    return max(0.0, g - abs(u - 1.0)) / g**2


def _sigmoid_deriv(u: float, g: float) -> float:
    s = 1.0 / (1.0 + math.exp(-g * (u - 1.0)))
    return g * s * (1.0 - s)


def _atan(u: float, g: float) -> float:
    return g / (2.0 * (1.0 + (math.pi / 2.0 * g * (u - 1.0)) ** 2))


@pytest.mark.parametrize(
    ("mode", "formula"),
    [(TRIANGLE, _triangle), (GradientMode("triangle", 0.5), _triangle), (SIGMOID, _sigmoid_deriv),
     (GradientMode("sigmoid", 1.5), _sigmoid_deriv), (ATAN, _atan), (GradientMode("atan", 0.7), _atan)],
)
def test_surrogate_equals_formula(mode: GradientMode, formula) -> None:
    u = torch.tensor(U, dtype=torch.float64)
    got = surrogate_grad(u - 1.0, mode)
    want = torch.tensor([formula(v, mode.gamma) for v in U], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", [TRIANGLE, SIGMOID, ATAN, GradientMode("triangle", 0.4)])
def test_surrogate_has_unit_area(mode: GradientMode) -> None:
    """A surrogate of the Heaviside step integrates to 1 (atan's tails converge slowly)."""
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate_grad(x, mode), x).item()
    assert area == pytest.approx(1.0, abs=5e-3)


def test_triangle_values_by_hand() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    assert surrogate_grad(x, TRIANGLE).tolist() == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_rga_has_no_per_step_surrogate() -> None:
    with pytest.raises(ConfigError):
        surrogate_grad(torch.zeros(3), RGA)


def test_rate_grad_is_half_on_0_2() -> None:
    i = torch.tensor([-0.5, -1e-6, 0.0, 0.3, 1.0, 1.7, 2.0, 2.000001, 5.0], dtype=torch.float64)
    assert rate_grad(i).tolist() == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("kind", list(SURROGATES))
def test_registry_gives_the_bare_kind_its_default_gamma(kind: str) -> None:
    mode = GradientMode.parse(kind)
    assert mode.surrogate is SURROGATES[kind]
    assert mode.gamma == SURROGATES[kind].default_gamma


@pytest.mark.parametrize("kind", [k for k, s in SURROGATES.items() if s.per_step])
@pytest.mark.parametrize("gamma", [0.4, 1.0, 4.0])
def test_scalar_formula_equals_tensor_formula(kind: str, gamma: float) -> None:
    """The float32 scalar form (compiled into the kernels) is the tensor form of the same kind."""
    spec = SURROGATES[kind]
    assert spec.grad is not None and spec.scalar is not None
    x = torch.tensor(U, dtype=torch.float32) - 1.0
    want = spec.grad(x.clone(), gamma)
    got = torch.tensor([float(spec.scalar(np.float32(v), np.float32(gamma))) for v in x.tolist()])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_surrogate_needs_both_formulas_or_neither() -> None:
    spec = SURROGATES["triangle"]
    with pytest.raises(ValueError):
        Surrogate("half", 1.0, grad=spec.grad)
