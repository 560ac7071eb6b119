"""APGD-CE (Croce & Hein, 2020): step-size-free PGD with momentum and step halving at checkpoints.

Per sample: the first step size is η = 2ε; iterate ``z = P(x_k + η·sign(∇))``,
``x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1}))`` with momentum a = 0.75 (plain step
on the first iteration); P projects into the ε-ball and the attack's bounds (ε in frame units,
frames ``[T, B, C, H, W]``). Checkpoints follow p₀ = 0, p₁ = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) in whole iterations as the reference code
(fra31/auto-attack, torchattacks) counts them: the first after ⌊0.22·N⌋ iterations, each later
window ⌊0.03·N⌋ shorter down to ⌊0.06·N⌋ (each at least 1). At a checkpoint η is halved, and the
iterate restarts from the best point so far (its gradient too; the momentum term then runs from
the iterate before the last step to that best point), when (:func:`halve_step`) either
  1. the loss rose in at most ρ = 0.75 of the window's iterations (the reference's ``≤``), or
  2. η was not halved at the previous checkpoint and the best loss has not improved since.
The best point per sample is kept: the first iterate that fools the model, else the highest-loss
iterate. Restarts (optional) rerun from new random starts on the samples not fooled yet.
N iterations cost N + 1 forward/backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dvsguard.attack.base import Attack, attack_mode, check_inputs, default_ids, input_gradient, project
from dvsguard.errors import AttackError


def checkpoints(n_iter: int) -> list[int]:
    """Iterations ``w_j`` (1 ≤ w_j < n_iter) after which the step size may be halved.

    The reference's integer schedule: windows of ``max(⌊0.22·N⌋, 1)`` iterations, each next one
    ``max(⌊0.03·N⌋, 1)`` shorter but at least ``max(⌊0.06·N⌋, 1)`` (N = 100: 22, 41, 57, 70, 80, …).
    """
    first, shrink, shortest = (max(int(f * n_iter), 1) for f in (0.22, 0.03, 0.06))
    points, w, k = [], first, first
    while w < n_iter:
        points.append(w)
        k = max(k - shrink, shortest)
        w += k
    return points


def halve_step(window: Tensor, rho: float, halved_before: Tensor, best_before: Tensor, best: Tensor) -> Tensor:
    """Which samples halve η at a checkpoint (``[B]`` bool), as Croce & Hein's reference code decides.

    Args:
        window: ``[k + 1, B]`` losses: the iterate before the window's k iterations, then theirs.
            At the first checkpoint the reference compares the first iterate with an unset (zero)
            entry, so the caller passes zeros as the first row there.
        rho: condition 1 halves when the loss rose in at most ``rho·k`` of the k steps.
        halved_before: ``[B]`` bool, η was halved at the previous checkpoint (all True at the
            first checkpoint, so condition 2 cannot fire there).
        best_before: ``[B]`` best loss at the previous checkpoint (at the first: the start's loss).
        best: ``[B]`` best loss now; condition 2 halves when it is not above ``best_before``.
    """
    if window.dim() != 2 or window.shape[0] < 2:
        raise AttackError(f"halve_step needs losses [k + 1, B] with k >= 1, got {tuple(window.shape)}")
    k = window.shape[0] - 1
    rises = (window[1:] > window[:-1]).sum(dim=0)
    few_rises = rises <= rho * k
    stalled = ~halved_before & (best_before >= best)
    return few_rises | stalled


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    """A ``[B]`` tensor shaped to broadcast against ``[T, B, ...]``."""
    return mask.view((1, -1) + (1,) * (like.dim() - 2))


class APGD(Attack):
    """APGD with the cross-entropy loss: ``steps`` iterations (100 by default), ``restarts`` runs."""

    name = "apgd"

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        momentum: float = 0.75,
        rho: float = 0.75,
        random_start: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(eps, **kw)
        if steps < 1 or restarts < 1:
            raise AttackError(f"APGD needs steps >= 1 and restarts >= 1, got steps={steps}, restarts={restarts}")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.momentum = float(momentum)
        self.rho = float(rho)
        self.random_start = bool(random_start)
        self.name = f"apgd{self.steps}"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        ids = default_ids(x, sample_ids)
        result = x.clone()
        fooled = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        best = torch.full((x.shape[1],), -math.inf, device=x.device)
        for restart in range(self.restarts):
            todo = (~fooled).nonzero().flatten()
            if todo.numel() == 0:
                break
            xs, ys = x[:, todo], y[todo]
            sub_ids = [ids[i] for i in todo.tolist()]
            start = xs
            if (self.random_start or restart > 0) and self.eps > 0:
                noise = self.noise(xs, "uniform", sub_ids, restart)
                start = xs + self.eps * noise
            x_run, fooled_run, loss_run = self._run(model, xs, ys, start)
            take = fooled_run | (loss_run > best[todo])
            result[:, todo] = torch.where(_bcast(take, x_run), x_run, result[:, todo])
            best[todo] = torch.where(take, loss_run, best[todo])
            fooled[todo] = fooled_run
        return result

    def run_from(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run (no restarts) from the given ``start`` ``[T, B, C, H, W]`` (projected first).

        The model is in eval mode with this attack's gradient mode during the run. Returns the
        point per sample (the first fooling iterate, else the highest-loss one; ``[T, B, ...]``),
        ``fooled`` ``[B]`` bool and the best loss ``[B]``.
        """
        check_inputs(x, y, self.eps, self.value_range)
        if start.shape != x.shape:
            raise AttackError(f"APGD start must be shaped like the frames {tuple(x.shape)}, got {tuple(start.shape)}")
        with attack_mode(model, self.grad_mode):
            return self._run(model, x.detach(), y, start.detach())

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run from ``start``; returns (point per sample, fooled [B], best loss [B])."""
        eps, bounds, a = self.eps, self.bounds, self.momentum
        marks = set(checkpoints(self.steps))

        x_cur = project(start, x, eps, bounds)
        g_cur, loss_start, logits = input_gradient(model, x_cur, y, self.loss_fn)
        x_prev = x_cur
        x_max, g_max, f_max = x_cur, g_cur, loss_start.clone()
        fooled = logits.argmax(1) != y
        x_adv = x_cur.clone()

        eta = torch.full_like(loss_start, 2.0 * eps)
        window = [torch.zeros_like(loss_start)]  # the reference's unset entry before the first iterate
        halved = torch.ones_like(fooled)
        best_at_mark = f_max.clone()

        for k in range(self.steps):
            z = project(x_cur + _bcast(eta, x_cur) * g_cur.sign(), x, eps, bounds)
            if k == 0:
                x_new = z
            else:
                x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x, eps, bounds)
            g_new, loss_new, logits = input_gradient(model, x_new, y, self.loss_fn)

            window.append(loss_new)
            better = loss_new > f_max
            bb = _bcast(better, x_new)
            x_max, g_max = torch.where(bb, x_new, x_max), torch.where(bb, g_new, g_max)
            f_max = torch.where(better, loss_new, f_max)
            newly = (logits.argmax(1) != y) & ~fooled
            x_adv = torch.where(_bcast(newly, x_new), x_new, x_adv)
            fooled = fooled | newly

            x_prev, x_cur, g_cur = x_cur, x_new, g_new
            if k + 1 in marks:
                halve = halve_step(torch.stack(window), self.rho, halved, best_at_mark, f_max)
                hb = _bcast(halve, x_cur)
                eta = torch.where(halve, eta / 2.0, eta)
                x_cur = torch.where(hb, x_max, x_cur)
                g_cur = torch.where(hb, g_max, g_cur)
                halved, best_at_mark, window = halve, f_max.clone(), window[-1:]

        point = torch.where(_bcast(fooled, x_adv), x_adv, x_max)
        return point, fooled, f_max

    def __repr__(self) -> str:
        return f"APGD(eps={self.eps:.5g}, steps={self.steps}, restarts={self.restarts})"
