"""Gradient modes of the spike function: surrogate derivatives ∂s/∂u and the rate gradient.

The forward spike function is always the Heaviside step ``s = H(u − θ)`` (a spike when
``u ≥ θ``). Only the backward pass changes with the mode:

``triangle`` (γ = 1, the training default; Esser et al. 2016)
    ∂s/∂u = max(0, γ − |u − θ|) / γ²  (area 1 for every γ; equals the paper's Eq. 33 at γ = 1)
``sigmoid`` (γ = 4)
    ∂s/∂u = γ · σ(γ(u − θ)) · (1 − σ(γ(u − θ))), the derivative of the sigmoid the paper's
    Eq. 34 names (the equation prints σ itself; the authors' released code uses its
    derivative, which is what a surrogate *gradient* of a step must be: area 1).
``atan`` (γ = 2)
    ∂s/∂u = γ / (2 · (1 + (π/2 · γ · (u − θ))²))  (the paper's Eq. 35)
``rga`` (rate gradient approximation, Bu et al. 2023)
    the per-step surrogate is replaced by the slope g(ī) of the neuron's firing rate as a
    function of its time-averaged input current ī; see :func:`rate_grad`. ``gamma`` is
    not used by this mode.

Every kind is one entry of :data:`SURROGATES` (name → :class:`Surrogate`): its default γ, its
derivative as tensor maths (:func:`surrogate_grad`, the torch loops of :mod:`dvsguard.snn.neuron`)
and the same formula on float32 scalars (compiled by :mod:`dvsguard.snn.kernels`). A new kind
is added there and nowhere else. All functions here are pure maths; :mod:`dvsguard.snn.neuron`
applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dvsguard.errors import ConfigError

TensorGrad = Callable[[torch.Tensor, float], torch.Tensor]
"""``grad(x, γ) -> ∂s/∂u`` at ``x = u − θ`` (any shape, x's dtype); may reuse its own temporaries."""
ScalarGrad = Callable[[np.float32, np.float32], np.float32]
"""``scalar(d, γ) -> ∂s/∂u`` at ``d = u − θ`` on float32 scalars: numpy scalar maths that numba can
compile (no torch), defined at module level so numba's on-disk cache can key on it by name."""


@dataclass(frozen=True)
class Surrogate:
    """One kind of gradient mode.

    Attributes:
        name: the kind's name in :class:`GradientMode` and its string form.
        default_gamma: γ of a bare ``"kind"`` (the paper's value).
        grad: the per-step surrogate on tensors; None for a kind that has none (the rate
            gradient ``rga``, which ignores γ; see :func:`rate_grad`).
        scalar: the same surrogate on float32 scalars, for the compiled kernels (None with ``grad``).
    """

    name: str
    default_gamma: float
    grad: TensorGrad | None = None
    scalar: ScalarGrad | None = None

    def __post_init__(self) -> None:
        if (self.grad is None) != (self.scalar is None):
            raise ValueError(f"surrogate {self.name!r}: give both the tensor and the scalar formula, or neither")

    @property
    def per_step(self) -> bool:
        """True for a per-step surrogate, False for the rate gradient."""
        return self.grad is not None


def _triangle(x: torch.Tensor, g: float) -> torch.Tensor:
    return (g - x.abs()).clamp_(min=0.0).mul_(1.0 / (g * g))


def _triangle_scalar(d: np.float32, g: np.float32) -> np.float32:
    f0, f1 = np.float32(0.0), np.float32(1.0)
    return max(g - abs(d), f0) * (f1 / (g * g))


def _sigmoid(x: torch.Tensor, g: float) -> torch.Tensor:
    sig = torch.sigmoid(x * g)
    return sig.mul_(1.0 - sig).mul_(g)


def _sigmoid_scalar(d: np.float32, g: np.float32) -> np.float32:
    f1 = np.float32(1.0)
    sig = f1 / (f1 + np.exp(-g * d))
    return g * sig * (f1 - sig)


def _atan(x: torch.Tensor, g: float) -> torch.Tensor:
    return (x * (math.pi / 2 * g)).square_().add_(1.0).reciprocal_().mul_(g / 2)


def _atan_scalar(d: np.float32, g: np.float32) -> np.float32:
    a = (np.float32(np.pi / 2) * g) * d
    return (g / np.float32(2.0)) / (np.float32(1.0) + a * a)


SURROGATES: dict[str, Surrogate] = {
    s.name: s
    for s in (
        Surrogate("triangle", 1.0, _triangle, _triangle_scalar),
        Surrogate("sigmoid", 4.0, _sigmoid, _sigmoid_scalar),
        Surrogate("atan", 2.0, _atan, _atan_scalar),
        Surrogate("rga", 1.0),
    )
}
"""The gradient-mode kinds by name, in the order the docs and error messages list them."""

KINDS: tuple[str, ...] = tuple(SURROGATES)


@dataclass(frozen=True)
class GradientMode:
    """How the backward pass differentiates the spike function.

    Attributes:
        kind: a name in :data:`SURROGATES` (``"triangle"``, ``"sigmoid"``, ``"atan"``, ``"rga"``).
        gamma: width/sharpness γ of the surrogate (> 0, in membrane-potential units for
            ``triangle``; an inverse width for ``sigmoid``/``atan``). Ignored by ``rga``.
    """

    kind: str
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"gradient mode kind {self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        gamma = float(self.gamma)
        if not math.isfinite(gamma) or gamma <= 0:
            raise ConfigError(f"gradient mode {self.kind}: gamma must be a finite number > 0, got {self.gamma!r}")
        object.__setattr__(self, "gamma", gamma)

    @property
    def surrogate(self) -> Surrogate:
        """This mode's entry in :data:`SURROGATES`."""
        return SURROGATES[self.kind]

    @classmethod
    def parse(cls, text: str) -> "GradientMode":
        """Parse ``"kind"`` or ``"kind:gamma"`` (e.g. ``"sigmoid:4"``, ``"rga"``).

        A bare kind takes the paper's γ for that kind (triangle 1, sigmoid 4, atan 2).
        Raises ConfigError on an unknown kind or a bad γ.
        """
        if isinstance(text, GradientMode):
            return text
        kind, sep, gamma_text = str(text).strip().partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise ConfigError(f"gradient mode {text!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not sep:
            return cls(kind, SURROGATES[kind].default_gamma)
        try:
            gamma = float(gamma_text)
        except ValueError:
            raise ConfigError(f"gradient mode {text!r}: gamma {gamma_text!r} is not a number") from None
        return cls(kind, gamma)

    def __str__(self) -> str:
        if not self.surrogate.per_step:
            return self.kind
        return f"{self.kind}:{self.gamma:g}"


TRIANGLE = GradientMode("triangle", 1.0)
SIGMOID = GradientMode("sigmoid", 4.0)
ATAN = GradientMode("atan", 2.0)
RGA = GradientMode("rga", 1.0)
PAPER_ENSEMBLE: tuple[GradientMode, ...] = (TRIANGLE, SIGMOID, ATAN, RGA)


def surrogate_grad(x: torch.Tensor, mode: GradientMode) -> torch.Tensor:
    """∂s/∂u evaluated at ``x = u − θ`` for a per-step surrogate mode (any shape).

    Raises ConfigError for ``rga``, which has no per-step surrogate.
    The result has x's shape and dtype.
    """
    grad = mode.surrogate.grad
    if grad is None:
        raise ConfigError(f"gradient mode {mode}: no per-step surrogate (use rate_grad)")
    return grad(x, mode.gamma)


def rate_grad(i_mean: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Rate gradient g(ī) of an IF neuron with hard reset, at time-averaged current ī.

    The firing rate of an IF neuron (rate r = mean_t s[t]) is close to clamp(ī/θ, 0, 1):
    slope 1/θ on [0, θ]. Bu et al. (2023) spread that unit area over twice the range,
    g(ī) = 1/(2θ) on [0, 2θ] and 0 elsewhere, so saturated neurons (θ < ī ≤ 2θ) still pass
    a gradient; with θ = 1 this is 0.5 on [0, 2]. Shape of the result = shape of ``i_mean``.
    """
    inside = (i_mean >= 0.0) & (i_mean <= 2.0 * threshold)
    return inside.to(i_mean.dtype) * (0.5 / threshold)
