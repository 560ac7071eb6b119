"""Hand-made differentiable models whose input gradients are known in closed form."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearLogits(nn.Module):
    """``logits[b] = W · vec(x[:, b]) + c``: a model whose ∇ₓ of every logit is a row of ``W``.

    ``x`` is ``[T, B, C, H, W]``; ``W`` is ``[K, T·C·H·W]``.
    """

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.transpose(0, 1).reshape(x.shape[1], -1)
        return rows @ self.weight.t() + self.bias


class QuadraticLogits(nn.Module):
    """Two classes, ``z_0 = 0``, ``z_1 = a·Σ x²``: ∇ₓ(z_0 − z_1) = −2a·x, so g = −2a·σ'(u)·x."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: Tensor) -> Tensor:
        rows = x.transpose(0, 1).reshape(x.shape[1], -1)
        z1 = self.a * rows.pow(2).sum(dim=1)
        return torch.stack([torch.zeros_like(z1), z1], dim=1)
