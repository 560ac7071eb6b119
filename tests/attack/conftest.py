"""Small models for the attack tests: a tiny conv net on ``[T, B, 2, H, W]`` frames."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv → BN → ReLU → pool → Linear on each time step, logits averaged over T."""

    def __init__(self, classes: int = 4, size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        h = torch.relu(self.bn(self.conv(x.flatten(0, 1))))
        h = nn.functional.avg_pool2d(h, 2).flatten(1)
        return self.fc(h).view(t, b, -1).mean(0)


class ZeroGradNet(nn.Module):
    """Logits that do not change with the input: the input gradient is exactly zero."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.arange(classes, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[1], -1) + 0.0 * x.sum(dim=(0, 2, 3, 4)).unsqueeze(1)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 6, 2, 8, 8, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    return x, y
