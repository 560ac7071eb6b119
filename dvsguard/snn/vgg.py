"""Spiking VGG for DVS frames: conv → BatchNorm (over merged T·B) → IF, average pooling, linear head.

Input ``[T, B, in_channels, H, W]`` (frames in [0, 1], H = W = ``input_size``), output
logits ``[B, num_classes]`` = mean over T of the last Linear layer's output. Inside the
network, activations are kept as ``[T·B, C, H, W]`` so that convolution, BatchNorm and
pooling see the merged time-and-batch dimension; each IFNeuron gets a ``[T, B, ...]`` view.

Only Conv2d (3×3, padding 1, no bias), BatchNorm2d, IFNeuron, AvgPool2d(2), Flatten and
Linear are used: the layer kinds the exporter maps to Loihi.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.limits import MAX_PARAMETERS, MAX_WIDTH
from dvsguard.snn.neuron import IFNeuron

PAPER_CHANNELS: tuple[int | str, ...] = (64, "A", 128, 256, "A", 512, 512, 512, "A", 512, 512)
LINEAR_INITS = ("kaiming", "torch")

_PRESETS: dict[str, dict[str, Any]] = {
    # The paper's VGG-11 for 48×48 DVS frames: 6×6×512 = 18432 features → 4096 → 4096 → classes.
    # The exporter's Loihi 2 core estimate (dvsguard.export.resources, 48×48): about 6217 cores
    # (49 chips of 128).
    "vgg11": {"channels": PAPER_CHANNELS, "head": (4096, 4096)},
    # Same features, a 512-wide head: 18432·512 ≈ 9.4M head weights instead of ≈ 92M. Estimate
    # (48×48): about 1949 cores (16 chips), mostly for the features, because each average pooling
    # is folded into the next convolution as a 6×6 kernel with 4× the weights of its 3×3 one.
    "vgg11-loihi": {"channels": PAPER_CHANNELS, "head": (512,)},
    # VGG-11's layout (8 convs, 3 poolings, one hidden layer) at a quarter of its width with a
    # 128-wide head, sized by the core estimate to one Loihi 2 chip: about 105 cores at 48×48 and
    # 73 at 32×32 (untrained weights; the pooling-folded convs' word counts move a few cores with
    # the trained weights' bit widths). The cost drivers are those folded 6×6 convs, whose
    # synapse words grow with input channels × 36 taps, and the first hidden layer's fan-in.
    "vgg11-chip": {"channels": (16, "A", 32, 64, "A", 128, 128, 128, "A", 128, 128), "head": (128,)},
    # The authors' `vgggesture` configuration for DVS Gesture (11 classes): conv 16, 32, pool,
    # conv 32, 32, pool, then one Linear straight to the classes (no hidden head), at the 48×48
    # input their DVS models default to: 12×12×32 = 4608 features → 11. pipelines/dvsgesture.toml
    # frames the 128×128 sensor at 48×48 (tonic Downsample); any size divisible by 4 works.
    "vgggesture": {"channels": (16, 32, "A", 32, 32, "A"), "head": (), "input_size": 48, "num_classes": 11},
    # Quick-start model: a few epochs on 48×48 digits on two CPU cores.
    "small": {"channels": (16, "A", 32, 32, "A", 64, 64, "A"), "head": (128,)},
    # Unit tests.
    "tiny": {"channels": (8, "A", 16, "A"), "head": (32,), "input_size": 16},
}


@dataclass(frozen=True)
class VGGConfig:
    """Architecture of a SpikingVGG.

    Attributes:
        channels: conv output channels in order, ``"A"`` for a 2×2 average pooling.
        head: widths of the hidden Linear → IF layers of the classifier.
        in_channels: input channels (2 polarities for DVS).
        input_size: input height = width in pixels; must be divisible by 2^(number of "A").
        num_classes: number of output classes.
        linear_init: initialisation of the classifier's Linear layers: ``kaiming`` (kaiming-normal
            weights, fan-in; dvsguard's) or ``torch`` (torch's own ``nn.Linear`` weight draw,
            U(−1/√fan_in, 1/√fan_in), i.e. std 1/√(3·fan_in); the authors' VGG keeps it). Biases
            are zero either way (the authors zero them too). Checkpoints from before this
            field hold kaiming-initialised models.

    A config is refused (ConfigError) before any model is built when a layer is wider than
    :data:`dvsguard.limits.MAX_WIDTH` or the network would hold more than
    :data:`dvsguard.limits.MAX_PARAMETERS` parameters (:func:`count_parameters`).
    """

    channels: tuple[int | str, ...] = PAPER_CHANNELS
    head: tuple[int, ...] = (4096, 4096)
    in_channels: int = 2
    input_size: int = 48
    num_classes: int = 10
    linear_init: str = "kaiming"

    def __post_init__(self) -> None:
        if self.linear_init not in LINEAR_INITS:
            raise ConfigError(f"VGGConfig.linear_init {self.linear_init!r} is unknown; expected one of "
                              f"{', '.join(LINEAR_INITS)}")
        channels = tuple(c if c == "A" else _pos_int(c, "channels") for c in self.channels)
        if not any(c != "A" for c in channels):
            raise ConfigError("VGGConfig.channels needs at least one convolution")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "head", tuple(_pos_int(h, "head") for h in self.head))
        for name in ("in_channels", "input_size", "num_classes"):
            object.__setattr__(self, name, _pos_int(getattr(self, name), name))
        pools = channels.count("A")
        if self.input_size % (2**pools):
            raise ConfigError(
                f"VGGConfig.input_size {self.input_size} is not divisible by 2^{pools} (one halving per 'A')"
            )
        widths = {"channels": max(c for c in channels if c != "A"), "head": max(self.head, default=1),
                  "in_channels": self.in_channels, "num_classes": self.num_classes}
        for name, width in widths.items():
            MAX_WIDTH.check(width, "VGGConfig", name, ConfigError)
        MAX_PARAMETERS.check(count_parameters(self), "VGGConfig", "the network", ConfigError)

    @property
    def feature_size(self) -> int:
        """Spatial size (pixels per side) after the last pooling."""
        return self.input_size // (2 ** self.channels.count("A"))

    @property
    def feature_channels(self) -> int:
        """Channels of the last convolution."""
        return [c for c in self.channels if c != "A"][-1]

    @property
    def flat_features(self) -> int:
        """Width of the flattened feature map entering the classifier."""
        return self.feature_channels * self.feature_size**2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, ints, strings) for checkpoints and JSON."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["head"] = list(self.head)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VGGConfig":
        """Inverse of :meth:`to_dict`. Raises ConfigError on unknown or invalid keys."""
        if not isinstance(d, dict):
            raise ConfigError(f"VGGConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"VGGConfig: unknown key {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
        kw = dict(d)
        for key in ("channels", "head"):
            if key in kw:
                if not isinstance(kw[key], (list, tuple)):
                    raise ConfigError(f"VGGConfig.{key} must be a list, got {type(kw[key]).__name__}")
                kw[key] = tuple(kw[key])
        return cls(**kw)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VGGConfig":
        """A named architecture (``vgg11``, ``vgg11-loihi``, ``vgg11-chip``, ``small``, ``tiny``) with optional
        overrides, e.g. ``VGGConfig.preset("small", num_classes=10)``."""
        if name not in _PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; expected one of {', '.join(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)


def _pos_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"VGGConfig.{what}: expected a positive integer, got {v!r}")
    return v


class SpikingVGG(nn.Module):
    """Spiking VGG: ``forward(x [T, B, C, H, W]) → logits [B, num_classes]``.

    Attributes:
        features: Sequential of Conv2d → BatchNorm2d → IFNeuron blocks and AvgPool2d(2).
        classifier: Sequential of Flatten, (Linear → IFNeuron)*, Linear.
        autocast_bf16: run convolutions and linear layers under CPU bf16 autocast (membrane
            state and BatchNorm statistics stay float32); off by default.
    """

    def __init__(self, cfg: VGGConfig, autocast_bf16: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.autocast_bf16 = bool(autocast_bf16)
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for c in cfg.channels:
            if c == "A":
                layers.append(nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(c), IFNeuron()]
                c_in = c
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width = cfg.flat_features
        for h in cfg.head:
            head += [nn.Linear(width, h), IFNeuron()]
            width = h
        head.append(nn.Linear(width, cfg.num_classes))
        self.classifier = nn.Sequential(*head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal conv weights (fan-out), BN = identity, Linear weights by ``cfg.linear_init``
        (kaiming-normal fan-in, or torch's ``kaiming_uniform_(a=√5)`` draw), zero biases."""
        torch_linear = self.cfg.linear_init == "torch"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                if torch_linear:  # what nn.Linear.reset_parameters draws for the weight
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless x is a finite float tensor ``[T, B, in_channels, size, size]``."""
        c, s = self.cfg.in_channels, self.cfg.input_size
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"SpikingVGG input must be a tensor, got {type(x).__name__}")
        if x.dim() != 5 or tuple(x.shape[2:]) != (c, s, s) or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"SpikingVGG input must be [T, B, {c}, {s}, {s}] (time first), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"SpikingVGG input must be a float tensor, got dtype {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("SpikingVGG input contains NaN or infinite values")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        T, B = x.shape[:2]
        use_bf16 = self.autocast_bf16 and x.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            # channels-last activations, so the convolutions run oneDNN's channels-last CPU
            # kernels; BatchNorm, pooling and the IF neuron keep the layout, so it is set once here
            h = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
            for layer in self.features:
                h = _apply(layer, h, T, B)
            for layer in self.classifier:
                h = _apply(layer, h, T, B)
        return h.float().view(T, B, -1).mean(0)


def _apply(layer: nn.Module, h: torch.Tensor, T: int, B: int) -> torch.Tensor:
    """Apply one layer to merged ``[T·B, ...]`` activations (IF layers see ``[T, B, ...]``)."""
    if isinstance(layer, IFNeuron):
        return layer(h.view(T, B, *h.shape[1:])).flatten(0, 1)
    return layer(h)


def count_macs(cfg: VGGConfig) -> int:
    """Multiply-accumulates of one forward time step for one sample (conv + linear)."""
    macs, c_in, size = 0, cfg.in_channels, cfg.input_size
    for c in cfg.channels:
        if c == "A":
            size //= 2
        else:
            macs += c_in * c * 9 * size * size
            c_in = c
    width = cfg.flat_features
    for h in (*cfg.head, cfg.num_classes):
        macs += width * h
        width = h
    return macs


def count_parameters(cfg: VGGConfig) -> int:
    """Parameters of ``SpikingVGG(cfg)`` from the config alone, without building it: conv
    weights (3×3, no bias), BatchNorm weights and biases, linear weights and biases."""
    n, c_in = 0, cfg.in_channels
    for c in cfg.channels:
        if c != "A":
            n += c_in * c * 9 + 2 * c
            c_in = c
    width = cfg.flat_features
    for h in (*cfg.head, cfg.num_classes):
        n += width * h + h
        width = h
    return n


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

