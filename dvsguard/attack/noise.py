"""Random perturbation: uniform noise in the ε-cube (Definition 4.1, Observation 1 of the paper)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dvsguard.attack.base import Attack


class RandomNoise(Attack):
    """``x + ε·δ`` with δ uniform in [-1, 1] per element (then clamped into :attr:`bounds`).

    Uses no gradient; the model is not run.
    """

    name = "random"
    uses_gradient = False

    @property
    def salt(self) -> str:
        """Just the name: the noise does not depend on a gradient mode this attack never uses."""
        return self.name

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, sample_ids: Tensor | Sequence[int] | None) -> Tensor:
        return x + self.eps * self.noise(x, "uniform", sample_ids)
