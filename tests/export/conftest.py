"""Helpers for the export tests: active stand-in models, random counts, hand-made netx files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from dvsguard.snn import SpikingVGG, VGGConfig

CAP = 3  # count cap of the test frames
T = 4  # frames per sample
# netx files written by lava-dl itself, in a folder beside the project (absent where CI clones it)
LAVA_DL_NETX = Path(__file__).resolve().parents[2].parent / "shared" / "netx"
LAVA_DL_FILES = ("pilotnet_snn.net", "mnist.net")


def random_counts(n: int, t: int = T, shape: tuple[int, ...] = (2, 16, 16), cap: int = CAP, density: float = 0.3, seed: int = 0) -> np.ndarray:
    """int64 ``[n, t, *shape]`` sparse event counts in 0..cap."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, cap + 1, size=(n, t, *shape))
    return counts * (rng.random((n, t, *shape)) < density)


def to_model_input(counts: np.ndarray, cap: int = CAP) -> torch.Tensor:
    """counts ``[N, T, ...]`` → float32 model input ``[T, N, ...]`` = counts / cap."""
    return torch.tensor(counts / cap, dtype=torch.float32).transpose(0, 1).contiguous()


def calibrate(model: nn.Module, x: torch.Tensor, seed: int = 1, beta: float = 0.5) -> nn.Module:
    """Give a randomly initialised spiking model realistic activity: BatchNorm statistics
    from ``x`` (cumulative average), then random BN shifts around ``beta`` and random Linear
    biases so every IF layer fires at a moderate rate. Returns the model in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.copy_(beta + 0.3 * torch.randn(m.bias.shape, generator=g))
                m.weight.mul_(1 + 0.2 * torch.rand(m.weight.shape, generator=g))
            if isinstance(m, nn.Linear):
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.weight.mul_(1.5)
    return model


def tiny_model(seed: int = 0, **overrides: object) -> SpikingVGG:
    """The ``tiny`` preset (16×16 input, two pools), calibrated to fire."""
    torch.manual_seed(seed)
    model = SpikingVGG(VGGConfig.preset("tiny", **overrides))
    c = model.cfg.in_channels
    s = model.cfg.input_size
    return calibrate(model, to_model_input(random_counts(32, shape=(c, s, s), seed=seed + 100)))


@pytest.fixture
def tiny() -> SpikingVGG:
    return tiny_model()


@pytest.fixture
def lava_dl_netx() -> Path:
    """The folder of lava-dl's own netx files (PilotNet SNN, MNIST); skip where it is absent."""
    missing = [name for name in LAVA_DL_FILES if not (LAVA_DL_NETX / name).is_file()]
    if missing:
        pytest.skip(f"lava-dl's own netx files {', '.join(missing)} are absent from {LAVA_DL_NETX}")
    return LAVA_DL_NETX


def lava_dl_frames(name: str, shape: tuple[int, ...], n: int, t: int, seed: int = 0) -> np.ndarray:
    """Random int64 inputs ``[n, t, *shape]`` for one of lava-dl's files: for PilotNet graded
    values in −4..76 (what lava-dl's PilotNet data pipeline makes of images in [0, 1] with the
    file's input transform, 2·40·x − 40 + 36), for MNIST binary spikes at a 20 % rate."""
    rng = np.random.default_rng(seed)
    if name == "pilotnet_snn.net":
        return rng.integers(-4, 77, size=(n, t, *shape))
    return (rng.random((n, t, *shape)) < 0.2).astype(np.int64)


# --------------------------------------------------------------------------- hand-made netx


def _bytes(g: h5py.Group, name: str, value: str) -> None:
    g.create_dataset(name, data=np.array([value.encode("ascii")]))


def _neuron(g: h5py.Group, vth: int, i_decay: int = 4096, v_decay: int = 0) -> None:
    n = g.create_group("neuron")
    _bytes(n, "type", "CUBA")
    n.create_dataset("iDecay", data=i_decay)
    n.create_dataset("vDecay", data=v_decay)
    n.create_dataset("vThMant", data=vth)
    n.create_dataset("refDelay", data=1)
    n.create_dataset("gradedSpike", data=False)


def write_handmade(path: Path, seed: int = 0, leaky: bool = True) -> Path:
    """A netx file written with h5py directly (not by dvsguard): graded 2×9×7 input →
    conv 3×3 stride 2 (odd weights, leaky CUBA) → conv 2×2 → flatten → dense with
    small non-negative weights (excitatory mode) → dense with mixed odd weights.

    The parameters are outside what the exporter produces (odd weights, leaks,
    rectangular maps) to test the simulator's reading of netx semantics in general.
    """
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["input_bits"] = 3
        f.attrs["time_steps"] = 5
        layer = f.create_group("layer")
        g = layer.create_group("0")
        _bytes(g, "type", "input")
        g.create_dataset("shape", data=[2, 9, 7])
        g = layer.create_group("1")  # conv 2→4, 3×3, stride 2, pad 1: 9×7 → 5×4
        _bytes(g, "type", "conv")
        g.create_dataset("shape", data=[4, 5, 4])
        g.create_dataset("weight", data=rng.integers(-60, 90, size=(4, 2, 3, 3)))
        g.create_dataset("bias", data=rng.integers(-20, 40, size=4))
        g.create_dataset("stride", data=[2, 2])
        g.create_dataset("padding", data=[1, 1])
        g.create_dataset("dilation", data=[1, 1])
        g.create_dataset("groups", data=1)
        _neuron(g, vth=150, i_decay=1024 if leaky else 4096, v_decay=300 if leaky else 0)
        g = layer.create_group("2")  # conv 4→3, 2×3 kernel, no padding: 5×4 → 4×2
        _bytes(g, "type", "conv")
        g.create_dataset("shape", data=[3, 4, 2])
        g.create_dataset("weight", data=rng.integers(-40, 120, size=(3, 4, 2, 3)))
        g.create_dataset("stride", data=[1, 1])
        g.create_dataset("padding", data=[0, 0])
        g.create_dataset("dilation", data=[1, 1])
        g.create_dataset("groups", data=1)
        _neuron(g, vth=100)
        g = layer.create_group("3")
        _bytes(g, "type", "flatten")
        g = layer.create_group("4")  # dense 24 → 6, non-negative small weights
        _bytes(g, "type", "dense")
        g.create_dataset("shape", data=[6])
        g.create_dataset("weight", data=rng.integers(0, 13, size=(6, 24)))
        g.create_dataset("bias", data=rng.integers(-3, 6, size=6))
        _neuron(g, vth=20, i_decay=512 if leaky else 4096)
        g = layer.create_group("5")  # dense 6 → 5, mixed odd weights
        _bytes(g, "type", "dense")
        g.create_dataset("shape", data=[5])
        g.create_dataset("weight", data=rng.integers(-101, 100, size=(5, 6)) | 1)
        g.create_dataset("bias", data=rng.integers(-5, 5, size=5))
        _neuron(g, vth=2**17 - 1)
    return path


def handmade_frames(n: int = 3, seed: int = 0) -> np.ndarray:
    """int64 ``[n, 5, 2, 9, 7]`` graded inputs (0..7) for :func:`write_handmade`."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 8, size=(n, 5, 2, 9, 7)) * (rng.random((n, 5, 2, 9, 7)) < 0.5)


# --------------------------------------------------------------------------- checkpoints and caches


def make_test_cache(folder: Path, n: int = 10, size: int = 16, n_frames: int = T, count_cap: int = CAP) -> Path:
    """A test-split frame cache of n random recordings (two classes) built by the real builder."""
    from dvsguard.data.cache import build_cache
    from dvsguard.data.events import EVENT_DTYPE, write_npz
    from dvsguard.data.frames import FramingConfig

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        k = 3000
        ev = np.empty(k, dtype=EVENT_DTYPE)
        ev["x"] = rng.integers(0, size, k)
        ev["y"] = rng.integers(0, size, k)
        ev["t"] = np.sort(rng.integers(0, 10_000, k))
        ev["p"] = rng.integers(0, 2, k)
        items.append((write_npz(folder / f"r{i}.npz", ev, (size, size, 2)), i % 2))
    cfg = FramingConfig(n_frames=n_frames, height=size, width=size, count_cap=count_cap)
    path = folder / "rec-test.h5"
    build_cache(path, items, classes=["even", "odd"], cfg=cfg, split="test", workers=1, progress=False)
    return path


def save_model_checkpoint(path: Path, model: SpikingVGG, cache: Path | None = None) -> Path:
    """A checkpoint as the trainer writes it (model + data entry) for ``model``."""
    from dvsguard.data.frames import FramingConfig
    from dvsguard.snn.checkpoint import model_payload, save_checkpoint

    s = model.cfg.input_size
    framing = FramingConfig(n_frames=T, height=s, width=s, count_cap=CAP).to_dict()
    data = {"framing": framing, "classes": [str(i) for i in range(model.cfg.num_classes)], "value_range": [0.0, 1.0]}
    if cache is not None:
        data["cache"] = str(cache)
    return save_checkpoint(path, {"model": model_payload(model), "data": data, "epoch": 1, "metrics": {}})
