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

All functions here are pure tensor maths; :mod:`dvsguard.snn.neuron` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from dvsguard.errors import ConfigError

KINDS: tuple[str, ...] = ("triangle", "sigmoid", "atan", "rga")


@dataclass(frozen=True)
class GradientMode:
    """How the backward pass differentiates the spike function.

    Attributes:
        kind: one of ``"triangle"``, ``"sigmoid"``, ``"atan"``, ``"rga"``.
        gamma: width/sharpness γ of the surrogate (> 0, in membrane-potential units for
            ``triangle``; an inverse width for ``sigmoid``/``atan``). Ignored by ``rga``.
    """

    kind: str
    gamma: float = 1.0

    DEFAULT_GAMMA: ClassVar[dict[str, float]] = {"triangle": 1.0, "sigmoid": 4.0, "atan": 2.0, "rga": 1.0}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"gradient mode kind {self.kind!r} is unknown; expected one of {', '.join(KINDS)}")
        gamma = float(self.gamma)
        if not math.isfinite(gamma) or gamma <= 0:
            raise ConfigError(f"gradient mode {self.kind}: gamma must be a finite number > 0, got {self.gamma!r}")
        object.__setattr__(self, "gamma", gamma)

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
            return cls(kind, cls.DEFAULT_GAMMA[kind])
        try:
            gamma = float(gamma_text)
        except ValueError:
            raise ConfigError(f"gradient mode {text!r}: gamma {gamma_text!r} is not a number") from None
        return cls(kind, gamma)

    def __str__(self) -> str:
        if self.kind == "rga":
            return "rga"
        return f"{self.kind}:{self.gamma:g}"


TRIANGLE = GradientMode("triangle", 1.0)
SIGMOID = GradientMode("sigmoid", 4.0)
ATAN = GradientMode("atan", 2.0)
RGA = GradientMode("rga", 1.0)
PAPER_ENSEMBLE: tuple[GradientMode, ...] = (TRIANGLE, SIGMOID, ATAN, RGA)


def surrogate_grad(x: torch.Tensor, mode: GradientMode) -> torch.Tensor:
    """∂s/∂u evaluated at ``x = u − θ`` for a per-step surrogate mode (any shape).

    Raises ConfigError for ``rga``, which has no per-step surrogate.
    """
    g = mode.gamma
    if mode.kind == "triangle":
        return (g - x.abs()).clamp_(min=0.0).mul_(1.0 / (g * g))
    if mode.kind == "sigmoid":
        sig = torch.sigmoid(x * g)
        return sig.mul_(1.0 - sig).mul_(g)
    if mode.kind == "atan":
        return (x * (math.pi / 2 * g)).square_().add_(1.0).reciprocal_().mul_(g / 2)
    raise ConfigError(f"gradient mode {mode}: no per-step surrogate (use rate_grad)")


def rate_grad(i_mean: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Rate gradient g(ī) of an IF neuron with hard reset, at time-averaged current ī.

    The firing rate of an IF neuron (rate r = mean_t s[t]) is close to clamp(ī/θ, 0, 1):
    slope 1/θ on [0, θ]. Bu et al. (2023) spread that unit area over twice the range,
    g(ī) = 1/(2θ) on [0, 2θ] and 0 elsewhere, so saturated neurons (θ < ī ≤ 2θ) still pass
    a gradient; with θ = 1 this is 0.5 on [0, 2]. Shape of the result = shape of ``i_mean``.
    """
    inside = (i_mean >= 0.0) & (i_mean <= 2.0 * threshold)
    return inside.to(i_mean.dtype) * (0.5 / threshold)
