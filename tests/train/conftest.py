"""Tiny stand-in networks on random frames ``[T, B, 2, H, W]`` for the training tests."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


class LinearOverTime(nn.Module):
    """logits = W · mean_T(x).flatten() + b: a network whose input gradient is known in closed form."""

    def __init__(self, in_features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(0).flatten(1))


class TinyConvNet(nn.Module):
    """conv → BN over T·B → tanh → avgpool → linear, mean over T; smooth, with BatchNorm."""

    def __init__(self, classes: int = 4, size: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * (size // 2) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        t, b = x.shape[:2]
        z = torch.tanh(self.bn(self.conv(x.flatten(0, 1))))
        z = self.pool(z).flatten(1)
        return self.fc(z).view(t, b, -1).mean(0)


@pytest.fixture
def frames() -> tuple[Tensor, Tensor]:
    """Random frames in [0, 1], shape [T=3, B=6, 2, 8, 8], and labels [6] over 4 classes."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 6, 2, 8, 8, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    return x, y


@pytest.fixture
def linear_net() -> type[LinearOverTime]:
    return LinearOverTime


@pytest.fixture
def tiny_net() -> type[TinyConvNet]:
    return TinyConvNet


@pytest.fixture
def one_thread():
    """One intra-op thread (two threads thrash on a shared two-core machine) and the global flags restored."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def large_digits_cache(tmp_path_factory):
    """800 train / 200 test simulated digits, 4 frames of 16×16 (sensor 32×32): enough to learn from.

    The small shared ``digits_cache`` (tests/conftest.py) is for the plumbing tests.
    """
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.data.synth import SynthConfig, make_digits

    root = tmp_path_factory.mktemp("digits-1k")
    make_digits(root / "digits", SynthConfig(per_class=100, size=32))
    result = preprocess(str(root / "digits"), root / "cache", FramingConfig(n_frames=4, height=16, width=16),
                        workers=1, test_fraction=0.2, progress=False)
    return result.train
