"""APGD-CE (Croce & Hein, 2020): step-size-free PGD with momentum and step halving at checkpoints.

Per sample: the first step size is η = 2ε; iterate ``z = P(x_k + η·sign(∇))``,
``x_{k+1} = P(x_k + a·(z − x_k) + (1 − a)·(x_k − x_{k−1}))`` with momentum a = 0.75 (plain step
on the first iteration). At checkpoints ``w_j = ⌈p_j·N⌉`` (p₀ = 0, p₁ = 0.22,
p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)) η is halved and the iterate restarts from the
best point so far when either
  1. the loss rose in fewer than ρ = 0.75 of the iterations since the last checkpoint, or
  2. η was not halved at the last checkpoint and the best loss has not improved since.
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

from dvsguard.attack.base import Attack, default_ids, input_gradient, project
from dvsguard.errors import AttackError


def checkpoints(n_iter: int) -> list[int]:
    """Iterations ``w_j`` (1 ≤ w_j < n_iter) at which the step size may be halved."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    points = {math.ceil(pj * n_iter - 1e-9) for pj in p[1:]}
    return sorted(w for w in points if 0 < w < n_iter)


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

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run from ``start``; returns (point per sample, fooled [B], best loss [B])."""
        eps, vr, a = self.eps, self.value_range, self.momentum
        marks = set(checkpoints(self.steps))

        x_cur = project(start, x, eps, vr)
        g_cur, loss_cur, logits = input_gradient(model, x_cur, y, self.loss_fn)
        x_prev = x_cur
        x_max, g_max, f_max = x_cur, g_cur, loss_cur.clone()
        fooled = logits.argmax(1) != y
        x_adv = x_cur.clone()

        eta = torch.full_like(loss_cur, 2.0 * eps)
        rises = torch.zeros_like(loss_cur)
        last_mark = 0
        eta_at_mark = eta.clone()
        fmax_at_mark = f_max.clone()

        for k in range(self.steps):
            z = project(x_cur + _bcast(eta, x_cur) * g_cur.sign(), x, eps, vr)
            if k == 0:
                x_new = z
            else:
                x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x, eps, vr)
            g_new, loss_new, logits = input_gradient(model, x_new, y, self.loss_fn)

            rises += (loss_new > loss_cur).to(rises.dtype)
            better = loss_new > f_max
            bb = _bcast(better, x_new)
            x_max, g_max = torch.where(bb, x_new, x_max), torch.where(bb, g_new, g_max)
            f_max = torch.where(better, loss_new, f_max)
            newly = (logits.argmax(1) != y) & ~fooled
            x_adv = torch.where(_bcast(newly, x_new), x_new, x_adv)
            fooled = fooled | newly

            x_prev, x_cur, g_cur, loss_cur = x_cur, x_new, g_new, loss_new
            it = k + 1
            if it in marks:
                few_rises = rises < self.rho * (it - last_mark)
                stalled = (eta_at_mark == eta) & (fmax_at_mark >= f_max)
                halve = few_rises | stalled
                hb = _bcast(halve, x_cur)
                eta = torch.where(halve, eta / 2.0, eta)
                x_cur = torch.where(hb, x_max, x_cur)
                x_prev = torch.where(hb, x_max, x_prev)
                g_cur = torch.where(hb, g_max, g_cur)
                loss_cur = torch.where(halve, f_max, loss_cur)
                rises.zero_()
                last_mark = it
                eta_at_mark = eta.clone()
                fmax_at_mark = f_max.clone()

        point = torch.where(_bcast(fooled, x_adv), x_adv, x_max)
        return point, fooled, f_max

    def __repr__(self) -> str:
        return f"APGD(eps={self.eps:.5g}, steps={self.steps}, restarts={self.restarts})"
