"""R+FGSM (Tramèr et al., 2018): a random signed step of size α, then an FGSM step of size ε − α."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from dvsguard.attack.base import Attack, input_gradient, project
from dvsguard.errors import AttackError


class RFGSM(Attack):
    """``x' = x + α·sign(N(0, I))``, then ``x' + (ε − α)·sign(∇ₓ' L(f(x'), y))``; α = ε/2 by default."""

    name = "rfgsm"

    def __init__(self, eps: float, alpha: float | None = None, **kw: Any) -> None:
        super().__init__(eps, **kw)
        self.alpha = self.eps / 2.0 if alpha is None else float(alpha)
        if not 0.0 <= self.alpha <= self.eps:
            raise AttackError(f"RFGSM needs 0 <= alpha <= eps, got alpha={self.alpha}, eps={self.eps}")

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        noise = self.noise(x, "normal", sample_ids)
        x_rand = project(x + self.alpha * noise.sign(), x, self.eps, self.bounds)
        grad, _, _ = input_gradient(model, x_rand, y, self.loss_fn)
        return self.step_project(x_rand + (self.eps - self.alpha) * grad.sign(), x)
