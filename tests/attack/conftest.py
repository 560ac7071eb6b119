"""Models and data for the attack tests.

Fast (default suite): a tiny conv net on random ``[T, B, 2, H, W]`` frames, a tiny SpikingVGG
trained on hand-made event patterns, and two untrained checkpoints for the shared ``digits_cache``
(tests/conftest.py). Slow: a small SpikingVGG trained by the project's trainer on the embedded
digits (:func:`digits_snn`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
def zero_grad_net() -> ZeroGradNet:
    return ZeroGradNet().eval()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 6, 2, 8, 8, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    return x, y


def patterns(n: int, seed: int, frames: int = 4, size: int = 16, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-made event-like frames ``[T, n, 2, size, size]`` in [0, 1] (not simulated recordings):
    class c is a dense patch in quadrant c (polarity c % 2) over sparse background noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (torch.rand(frames, n, 2, size, size, generator=g) < 0.08).float() * 0.5
    h = size // 2
    for i in range(n):
        c = int(y[i])
        r0, c0 = (c // 2) * h, (c % 2) * h
        patch = (torch.rand(frames, h - 4, h - 4, generator=g) < 0.5).float() * 0.5
        x[:, i, c % 2, r0 + 2 : r0 + h - 2, c0 + 2 : c0 + h - 2] += patch
    return x.clamp(0.0, 1.0), y


@pytest.fixture(scope="session")
def trained_snn():
    """A tiny SpikingVGG trained for a few epochs on :func:`patterns` (clean test accuracy ≈ 1).

    A fast stand-in for a trained model; :func:`digits_snn` is the one trained on the embedded digits.
    """
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    torch.manual_seed(0)
    x, y = patterns(256, seed=0)
    model = SpikingVGG(VGGConfig.preset("tiny", num_classes=4))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(4):
        for i in range(0, x.shape[1], 32):
            loss = nn.functional.cross_entropy(model(x[:, i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def test_patterns() -> tuple[torch.Tensor, torch.Tensor]:
    return patterns(32, seed=1)


@pytest.fixture(scope="session")
def digits_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two untrained tiny SpikingVGG checkpoints for the shared ``digits_cache`` (16×16, 10 classes).

    Returns (target checkpoint, source checkpoint).
    """
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    root = tmp_path_factory.mktemp("digits-ckpt")
    paths = []
    for seed, name in ((0, "target"), (1, "source")):
        torch.manual_seed(seed)
        model = SpikingVGG(VGGConfig.preset("tiny", num_classes=10))
        paths.append(save_checkpoint(root / name / "model.pt", {"model": model_payload(model)}))
    return paths[0], paths[1]


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op torch thread (two thrash on a shared two-core machine); the setting is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class DigitsModel:
    """A trained model and the test split of its cache.

    Attributes:
        model: SpikingVGG in eval mode, input ``[T=5, B, 2, 16, 16]`` frames (count/15 in [0, 1]).
        test_cache: the test-split HDF5 cache (240 samples, 24 per digit).
        test_acc: clean test accuracy the trainer logged for the final epoch.
    """

    model: nn.Module
    test_cache: Path
    test_acc: float


@pytest.fixture(scope="session")
def digits_snn(tmp_path_factory) -> DigitsModel:
    """The ``small`` SpikingVGG trained vanilla by the project's trainer on the embedded digits.

    Data: 1200 simulated recordings (120 per digit, 32×32 sensor, background noise 0.5 events per
    pixel per second), framed into 5 frames of 16×16, 20 % held out for testing. Training: 12 epochs
    of SGD (lr 0.1, cosine), no augmentation, seed 0, one thread; the final (not the best) weights.
    Clean test accuracy ≈ 0.65 (chance 0.1); about 25 s on an idle two-core machine.
    """
    from dvsguard.data.cache import split_path
    from dvsguard.data.frames import FramingConfig
    from dvsguard.data.preprocess import preprocess
    from dvsguard.data.synth import SynthConfig, make_digits
    from dvsguard.snn.checkpoint import load_model
    from dvsguard.train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("digits-snn")
    with single_thread():
        make_digits(root / "rec", SynthConfig(per_class=120, size=32, noise=0.5, seed=0), workers=1)
        caches = preprocess(str(root / "rec"), root / "cache", FramingConfig(n_frames=5, height=16, width=16),
                            workers=1, test_fraction=0.2, progress=False)
        cfg = TrainConfig(cache=str(caches.train), defense="vanilla", preset="small", epochs=12, optimizer="sgd",
                          lr=0.1, augment=False, robust_limit=0, seed=0)
        result = train(cfg, root / "train", device="cpu", threads=1)
    model, _ = load_model(result["last"])
    return DigitsModel(model=model, test_cache=split_path(caches.train, "test"), test_acc=result["final"]["test_acc"])
