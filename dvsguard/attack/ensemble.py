"""Ensemble attack: a sample counts as fooled if any member's adversarial example fools the target.

Members are one base attack run under different gradient modes of the crafting model's IF neurons
(the paper's four: BPTT with triangle γ=1, sigmoid γ=4, atan γ=2 surrogates, and RGA; appendix E),
or under a grid of surrogate widths γ (appendix G, :func:`gamma_grid`).

Early exit: member m attacks only the samples that no earlier member fooled (and that the target
classifies correctly to begin with), so the cost falls as robustness falls. Because every attack's
randomness is keyed per sample (see :mod:`dvsguard.attack.base`) and the model is in eval mode, the
result is the same, sample for sample, as running every member on every sample (``early_exit=False``).

White box: craft on the target itself. Black box: craft on a source model (``model``) and judge
success on ``target``; only the source's gradients are used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.attack.base import Attack, check_inputs, default_ids, eval_mode, parse_mode, predict
from dvsguard.errors import AttackError

log = logging.getLogger(__name__)


def paper_modes() -> tuple[Any, ...]:
    """The paper's ensemble: triangle γ=1, sigmoid γ=4, atan γ=2, RGA (``GradientMode`` values)."""
    from dvsguard.snn.surrogate import PAPER_ENSEMBLE

    return tuple(PAPER_ENSEMBLE)


def gamma_grid(kind: str = "triangle", start: float = 0.1, stop: float = 3.0, step: float = 0.1) -> tuple[Any, ...]:
    """Surrogates of one shape with widths γ = start, start+step, …, stop (appendix G: 30 triangles)."""
    from dvsguard.snn.surrogate import GradientMode

    if step <= 0 or stop < start:
        raise AttackError(f"gamma grid needs step > 0 and stop >= start, got {start}..{stop} step {step}")
    n = int(round((stop - start) / step)) + 1
    return tuple(GradientMode(kind, round(start + i * step, 10)) for i in range(n))


def has_spiking_neurons(model: nn.Module) -> bool:
    """True when ``model`` has IF neurons whose gradient mode an ensemble can switch."""
    from dvsguard.snn.neuron import IFNeuron

    return any(isinstance(m, IFNeuron) for m in model.modules())


@dataclass
class EnsembleResult:
    """Outcome of an ensemble attack on one batch.

    Attributes:
        x_adv: ``[T, B, ...]``: the first fooling member's example, else the last member's (x itself
            for samples the target already misclassifies).
        fooled: ``[B]`` bool: the target misclassifies the sample (clean or under some member).
        member: ``[B]`` int64: index of the first member that fooled it, -1 when the clean sample is
            already misclassified, ``len(members)`` when no member fooled it.
        attacked: number of samples each member attacked.
    """

    x_adv: Tensor
    fooled: Tensor
    member: Tensor
    attacked: list[int] = field(default_factory=list)


class Ensemble:
    """Run ``base`` once per gradient mode; keep, per sample, the first example that fools the target.

    Args:
        base: the attack every member runs (its own ``grad_mode`` is replaced per member).
        modes: gradient modes (``GradientMode`` or strings such as ``"sigmoid:4"``); default: the paper's four.
            A crafting model without IF neurons has no modes to switch: the base attack runs once.
        early_exit: attack only samples not fooled yet (same result, less work).
    """

    def __init__(self, base: Attack, modes: Sequence[Any] | None = None, early_exit: bool = True) -> None:
        self.base = base
        self.modes = tuple(parse_mode(m) for m in (paper_modes() if modes is None else modes))
        if not self.modes:
            raise AttackError("an ensemble needs at least one gradient mode")
        self.early_exit = bool(early_exit)

    def members(self, model: nn.Module) -> list[Attack]:
        """The member attacks for crafting on ``model``."""
        if not self.base.uses_gradient or not has_spiking_neurons(model):
            return [self.base]
        return [self.base.with_mode(m) for m in self.modes]

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None = None) -> Tensor:
        return self.run(model, x, y, sample_ids).x_adv

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        sample_ids: Tensor | Sequence[int] | None = None,
        target: nn.Module | None = None,
    ) -> EnsembleResult:
        """Attack ``x`` ``[T, B, ...]`` crafting on ``model``; judge success on ``target`` (default: ``model``)."""
        check_inputs(x, y, self.base.eps, self.base.value_range)
        target = model if target is None else target
        ids = torch.tensor(default_ids(x, sample_ids), dtype=torch.long)
        x = x.detach()
        with eval_mode(target):
            fooled = predict(target, x) != y
        members = self.members(model)
        member = torch.where(fooled, -1, len(members)).to(torch.long)
        x_adv = x.clone()
        attacked: list[int] = []
        for m, attack in enumerate(members):
            todo = (~fooled).nonzero().flatten() if self.early_exit else torch.arange(x.shape[1])
            attacked.append(int(todo.numel()))
            if todo.numel() == 0:
                continue
            xa = attack(model, x[:, todo], y[todo], sample_ids=ids[todo])
            with eval_mode(target):
                hit = predict(target, xa) != y[todo]
            open_ = ~fooled[todo]  # not fooled by an earlier member or on the clean input
            keep = open_  # newly fooled: this member's example; still robust: the latest example
            x_adv[:, todo[keep]] = xa[:, keep]
            newly = todo[hit & open_]
            member[newly] = m
            fooled[newly] = True
            log.debug("ensemble member %s: attacked %d, fooled %d", attack, todo.numel(), newly.numel())
        return EnsembleResult(x_adv=x_adv, fooled=fooled, member=member, attacked=attacked)

    def __repr__(self) -> str:
        return f"Ensemble({self.base!r}, modes=[{', '.join(map(str, self.modes))}], early_exit={self.early_exit})"
