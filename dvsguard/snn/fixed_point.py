"""Loihi 2 fixed point, shared by the trainer and the exporter: limits, the per-layer scale
rule, the integer grid, and a SpikingVGG whose weights live on that grid.

Integer form of one synaptic layer (netx CUBA neuron, lava-nc ``fixed_pt`` semantics). With
scale s (integer units per float unit of the layer's current) and k the side of the average
pooling folded into the layer (1 = none):

* weights w = s·W are even integers in [−256, 254] (8-bit mantissa; netx drops the LSB in
  mixed-sign mode). The first layer sees frame counts c = x · input_scale instead of the
  model's x, so its model weights are W = w · input_scale / s.
* bias b = s·B is an integer; netx stores k²·b, a signed 13-bit value.
* with the pooling folded (every tap repeated over a k×k block), the integer sum of a step
  is N = k²·(w·P + b) for the pooled input P, and netx fires when Σ N > vThMant (the
  voltage v = 2⁶·Σ N against vThMant·2⁶, strictly greater), then resets v to 0.

Tie-free thresholds. An IF neuron fires when u ≥ θ with u = Σ N / (k²·s). The scale is
chosen so that s·θ = θ_int + 1/(2k²) for an integer θ_int, and vThMant = k²·θ_int. Then
u ≥ θ ⟺ Σ N ≥ k²·θ_int + ½ ⟺ Σ N > k²·θ_int, exactly the integer rule, and no integer sum
lands on the threshold: a float model with on-grid weights decides every spike with a
margin of at least 1/(2k²·s) in u, far above float32 rounding, so it fires exactly where
the integer network fires.

Voltage limits (24-bit u and v, i.e. |Σ N| < 2¹⁷): the scale keeps one step's largest
possible synaptic input below 2¹⁷ (no current wrap) and the read-out layer's whole
accumulation below vThMant = 2¹⁷ − 1 (no clipping, no spike), each at the price of at most
2 (read-out: 3) bits of weight resolution; beyond that the layer is reported. A hidden
neuron's voltage may still clip at −2²³ after many inhibitory steps; that is harmless
unless the neuron climbs back to its threshold within the sample, which the integer
simulator counts (``spike_after_clip``).

:func:`attach` turns a trained SpikingVGG into its fixed-point form for fine-tuning:
BatchNorm folded into the conv weights once (eval statistics, then frozen), weights and
folded biases fake-quantized onto each layer's grid with a straight-through gradient.
:func:`baked_state_dict` gives the on-grid tensors under the plain SpikingVGG names, so the
checkpoint loads with :func:`dvsguard.snn.checkpoint.load_model`; the :class:`FixedPointSpec`
recorded next to it lets the exporter reproduce exactly the same integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dvsguard.errors import ConfigError
from dvsguard.snn.neuron import IFNeuron

# netx / Loihi 2 fixed-point limits (lava-nc 0.10 PyLifModelBitAcc, lava-dl 0.6 netx).
WEIGHT_MIN, WEIGHT_MAX = -256, 254  # 8-bit signed mantissa × 2 (mixed sign mode drops the LSB)
WEIGHT_STEP = 2  # stored weights are even
BIAS_MIN, BIAS_MAX = -(2**12), 2**12 - 1  # bias_mant: signed 13 bits
VTH_MAX = 2**17 - 1  # vThMant: unsigned 17 bits
STATE_BITS = 24  # u and v: signed 24 bits
ACT_SHIFT = 6  # synaptic input, bias and threshold are shifted left by 6 bits
SUM_LIMIT = 2 ** (STATE_BITS - 1 - ACT_SHIFT)  # |integer sums| before the 2⁶ shift stay below this

SPEC_FORMAT = "dvsguard-fixed-point/1"


def threshold_offset(pool: int) -> float:
    """How far the float threshold sits above the integer one, in integer units: 1/(2k²)."""
    return 0.5 / (pool * pool)


def vth_mant(theta_int: int, pool: int) -> int:
    """netx vThMant of a layer with integer threshold θ_int and k×k pooling folded in: k²·θ_int."""
    return pool * pool * theta_int


def bias_range(pool: int) -> tuple[int, int]:
    """Range of the integer bias b (netx stores k²·b in 13 bits)."""
    k2 = pool * pool
    return -((-BIAS_MIN) // k2), BIAS_MAX // k2


def weight_scale_limit(weight: np.ndarray) -> float:
    """Largest s with s·weight inside [WEIGHT_MIN, WEIGHT_MAX] (inf for all-zero weights)."""
    pos = float(weight.max(initial=0.0))
    neg = float(-weight.min(initial=0.0))
    return min(WEIGHT_MAX / pos if pos > 0 else math.inf, -WEIGHT_MIN / neg if neg > 0 else math.inf)


def choose_scale(
    name: str,
    weight: np.ndarray,
    bias: np.ndarray,
    theta: float | None,
    pool: int,
    time_steps: int,
    input_max: float = 1.0,
) -> tuple[float, list[str]]:
    """The per-layer scale rule: (s, notes about limits that could not all be met).

    weight ``[out, ...]`` and bias ``[out]`` in float units per integer input unit (the first
    layer's weights divided by input_scale), θ of the IF neuron (None for the read-out),
    k = pool, T = time_steps, input_max the largest input value (input_scale for the first
    layer, 1 for spikes). In order: weights fill the 8-bit range; the threshold fits 17 bits;
    biases fit 13 bits and one step's largest input stays below 2¹⁷ (each giving up at most
    2 bits, then clipping/reporting); the read-out's accumulation over T steps stays below
    vThMant (at most 3 bits); finally s·θ = θ_int + 1/(2k²) for hidden layers.
    """
    notes: list[str] = []
    k2 = pool * pool
    w = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    b = np.asarray(bias, dtype=np.float64)
    s_w = weight_scale_limit(w)
    s = s_w
    max_b = float(np.abs(b).max(initial=0.0))
    pos = np.clip(w, 0, None).sum(axis=1) * input_max
    neg = np.clip(-w, 0, None).sum(axis=1) * input_max
    worst_step = float(max(pos.max(initial=0.0), neg.max(initial=0.0))) * k2
    if theta is not None:
        s = min(s, (VTH_MAX // k2 + threshold_offset(pool)) / theta)
    if max_b > 0 and s * max_b * k2 > BIAS_MAX:
        s = max(BIAS_MAX / (max_b * k2), s / 4)
    if worst_step > 0 and s * worst_step >= SUM_LIMIT:
        s_c = (SUM_LIMIT - 1) / worst_step
        if s_c < s / 4:
            notes.append(f"{name}: a step's synaptic input may exceed 24 bits when most inputs are active at once")
        s = max(s_c, s / 4)
    if theta is None:
        bound = np.maximum(pos + np.clip(b, 0, None), neg + np.clip(-b, 0, None))
        worst = float(bound.max(initial=0.0)) * k2 * time_steps
        if worst > 0 and s * worst > VTH_MAX:
            s_r = VTH_MAX / worst
            if s_r < s_w / 8:
                notes.append(
                    f"{name}: read-out scale limited to {s_w / 8:.3g} (5 weight bits); its voltage may clip "
                    "when many inputs are active at once"
                )
            s = min(s, max(s_r, s_w / 8))
        if not math.isfinite(s):
            s = 1.0
        return float(s), notes
    if not math.isfinite(s):
        s = 1.0
    theta_int = max(1, math.floor(s * theta - threshold_offset(pool)))
    return (theta_int + threshold_offset(pool)) / theta, notes


def theta_int_of(name: str, scale: float, theta: float, pool: int) -> int:
    """θ_int of a recorded scale; ConfigError unless s·θ = θ_int + 1/(2k²) (to 1e-6)."""
    value = scale * theta - threshold_offset(pool)
    theta_int = round(value)
    if theta_int < 1 or abs(value - theta_int) > 1e-6 * max(1.0, abs(value)):
        raise ConfigError(
            f"{name}: scale {scale!r} does not put the threshold {theta:g} half a unit (1/(2·{pool}²)) "
            "above an integer threshold"
        )
    return int(theta_int)


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Grid:
    """Values n / unit for integers n ∈ step·ℤ ∩ [lo, hi] (one parameter's integer grid)."""

    unit: float
    step: int
    lo: int
    hi: int

    def integers(self, t: Tensor) -> Tensor:
        """The integers n of the nearest grid values (float tensor, exact integers)."""
        return torch.clamp(torch.round(t * self.unit / self.step) * self.step, self.lo, self.hi)

    def __call__(self, t: Tensor) -> Tensor:
        """Nearest grid value in the forward pass; the identity gradient (straight through)."""
        return _StraightThrough.apply(t, self)


class _StraightThrough(torch.autograd.Function):
    """Forward: the grid value itself (exactly what the checkpoint stores); backward: identity."""

    @staticmethod
    def forward(ctx, t: Tensor, grid: Grid) -> Tensor:  # type: ignore[override]
        return grid.integers(t) / grid.unit

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class GridConv2d(nn.Conv2d):
    """A Conv2d (no bias) whose weights pass through a :class:`Grid` in every forward."""

    grids: dict[str, Grid]

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.grids["weight"](self.weight), None)


class GridLinear(nn.Linear):
    """A Linear whose weights and bias pass through their grids in every forward."""

    grids: dict[str, Grid]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.grids["weight"](self.weight), self.grids["bias"](self.bias))


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d folded into its conv: identity statistics, always in eval form (no batch
    statistics, no running-average updates), its bias (the folded bias) on a grid."""

    grids: dict[str, Grid]

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.grids["bias"](self.bias),
                            False, 0.0, self.eps)


_GRID_TYPES = (GridConv2d, GridLinear, FoldedBatchNorm2d)


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class LayerGrid:
    """One layer's fixed-point record.

    Attributes:
        name: path of its Conv2d/Linear (``features.0``); the exporter's layer name.
        bias: path of the module holding its bias (the folded BatchNorm, or ``name``).
        scale: s, integer units per float unit of the layer's current.
        pool: k of the k×k average pooling folded into it.
        theta_int: integer threshold (vThMant = k²·θ_int); None for the read-out.
        weight_unit: integer weight units per model weight unit (s, or s / input_scale for
            the first layer).
    """

    name: str
    bias: str
    scale: float
    pool: int
    theta_int: int | None
    weight_unit: float

    def weight_grid(self) -> Grid:
        return Grid(self.weight_unit, WEIGHT_STEP, WEIGHT_MIN, WEIGHT_MAX)

    def bias_grid(self) -> Grid:
        lo, hi = bias_range(self.pool)
        return Grid(self.scale, 1, lo, hi)


@dataclass(frozen=True)
class FixedPointSpec:
    """The grids of a fixed-point model, as recorded in its checkpoint (``"fixed_point"``)."""

    input_scale: float
    time_steps: int
    layers: tuple[LayerGrid, ...]

    def scales(self) -> dict[str, float]:
        """Layer name → s, what the exporter needs."""
        return {layer.name: layer.scale for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "input_scale": float(self.input_scale),
            "time_steps": int(self.time_steps),
            "layers": [asdict(layer) for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Any) -> FixedPointSpec:
        """Inverse of :meth:`to_dict`; ConfigError naming what is wrong."""
        if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
            raise ConfigError(f"fixed-point record: format is not {SPEC_FORMAT!r}")
        try:
            layers = tuple(LayerGrid(**layer) for layer in d["layers"])
            spec = cls(float(d["input_scale"]), int(d["time_steps"]), layers)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"fixed-point record: malformed ({e})") from None
        for layer in layers:
            if not (math.isfinite(layer.scale) and layer.scale > 0 and layer.pool >= 1):
                raise ConfigError(f"fixed-point record: layer {layer.name}: invalid scale or pooling")
        return spec


# --------------------------------------------------------------------------- the model


@dataclass
class _Block:
    name: str
    module: nn.Module
    seq: nn.Sequential
    index: int
    pool: int
    bn: tuple[str, nn.Sequential, int] | None = None
    theta: float | None = None


def _blocks(model: nn.Module) -> Iterator[_Block]:
    """The Conv2d/Linear layers of a SpikingVGG with their BatchNorm, IF θ and folded pooling."""
    if not (hasattr(model, "features") and hasattr(model, "classifier")):
        raise ConfigError(f"{type(model).__name__}: fixed point needs a SpikingVGG (features + classifier)")
    pool = 1
    block: _Block | None = None
    for part in ("features", "classifier"):
        seq = getattr(model, part)
        for index, (child, m) in enumerate(seq.named_children()):
            name = f"{part}.{child}"
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if block is not None:
                    yield block
                block = _Block(name, m, seq, index, pool)
                pool = 1
            elif isinstance(m, nn.BatchNorm2d) and block is not None and block.bn is None and block.theta is None:
                block.bn = (name, seq, index)
            elif isinstance(m, IFNeuron) and block is not None:
                block.theta = float(m.threshold)
            elif isinstance(m, nn.AvgPool2d):
                pool *= m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            elif not isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity)):
                raise ConfigError(f"{name}: fixed point cannot represent {type(m).__name__}")
    if block is not None:
        yield block


def is_fixed_point(model: nn.Module) -> bool:
    """Whether :func:`attach` has been applied to ``model``."""
    return any(isinstance(m, _GRID_TYPES) for m in model.modules())


def fold_bn(weight: np.ndarray, bias: np.ndarray | None, bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Fold an eval-mode BatchNorm (running statistics) into the preceding conv/linear.

    weight ``[out, ...]``, bias ``[out]`` or None → (weight', bias') with
    weight' = weight·γ/√(σ²+ε) and bias' = (bias − μ)·γ/√(σ²+ε) + β, float64.
    """
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(mean)
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(mean)
    g = gamma / np.sqrt(var + float(bn.eps))
    b = np.zeros_like(mean) if bias is None else np.asarray(bias, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64) * g.reshape((-1,) + (1,) * (weight.ndim - 1))
    return w, (b - mean) * g + beta


def _fold_into(block: _Block) -> None:
    """Fold the block's BatchNorm into the conv weight (:func:`fold_bn`); the BatchNorm keeps
    identity statistics (μ = 0, σ² = 1, γ = √(1+ε)) and the folded bias as β."""
    if block.bn is None:
        return
    _, seq, index = block.bn
    bn = seq[index]
    conv = block.module
    bias = None if conv.bias is None else conv.bias.detach().double().cpu().numpy()
    w, b = fold_bn(conv.weight.detach().double().cpu().numpy(), bias, bn)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        if conv.bias is not None:
            conv.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.copy_(torch.sqrt(torch.tensor(1.0 + bn.eps, dtype=bn.weight.dtype)))
        bn.bias.copy_(torch.from_numpy(b))


def _swap(seq: nn.Sequential, index: int, cls: type[nn.Module], grids: dict[str, Grid]) -> nn.Module:
    """Replace ``seq[index]`` by an instance of ``cls`` (a subclass of its type) sharing its
    parameters and buffers, so the state_dict keys stay those of the plain model."""
    old = seq[index]
    new = cls.__new__(cls)
    new.__dict__.update(old.__dict__)
    new.grids = grids
    seq[index] = new
    return new


def attach(model: nn.Module, input_scale: float, time_steps: int, spec: FixedPointSpec | None = None) -> FixedPointSpec:
    """Put a trained SpikingVGG (changed in place) into fixed-point form; returns its grids.

    BatchNorm is folded into the conv weights with its running statistics and then frozen;
    every Conv2d/Linear weight and folded bias is fake-quantized onto its layer's grid
    (scale from :func:`choose_scale`, or from ``spec`` to keep a recorded one). input_scale:
    count_cap (frame counts per model-input unit); time_steps: T. The model's parameter
    tensors and state_dict keys are unchanged; BatchNorm weights stop requiring gradients.
    """
    if is_fixed_point(model):
        raise ConfigError("the model is in fixed-point form already")
    if not (input_scale >= 1 and float(input_scale).is_integer()):
        raise ConfigError(f"input scale (count cap) must be a positive integer, got {input_scale}")
    blocks = list(_blocks(model))
    if not blocks:
        raise ConfigError(f"{type(model).__name__}: no Conv2d/Linear layer")
    recorded = {layer.name: layer for layer in spec.layers} if spec is not None else None
    if recorded is not None and set(recorded) != {b.name for b in blocks}:
        raise ConfigError("the fixed-point record names other layers than the model has (another architecture?)")
    if spec is not None and (spec.input_scale != input_scale or spec.time_steps != time_steps):
        raise ConfigError(
            f"the fixed-point record is for count cap {spec.input_scale:g} and T={spec.time_steps}, "
            f"the data has {input_scale:g} and T={time_steps}"
        )
    layers: list[LayerGrid] = []
    for i, block in enumerate(blocks):
        if isinstance(block.module, nn.Conv2d) and block.module.bias is not None and block.bn is None:
            raise ConfigError(f"{block.name}: a Conv2d with a bias and no BatchNorm has nowhere to keep its folded bias")
        _fold_into(block)
        first_div = float(input_scale) if i == 0 else 1.0
        if recorded is not None:
            s = recorded[block.name].scale
        else:
            with torch.no_grad():
                w = block.module.weight.double().cpu().numpy() / first_div
                b = _bias_module(block).bias.double().cpu().numpy()
            s, _ = choose_scale(block.name, w, b, block.theta, block.pool, time_steps, input_max=first_div)
        theta_int = None if block.theta is None else theta_int_of(block.name, s, block.theta, block.pool)
        bias_name = block.bn[0] if block.bn is not None else block.name
        layers.append(LayerGrid(block.name, bias_name, float(s), block.pool, theta_int, float(s) / first_div))
    for block, layer in zip(blocks, layers):
        if block.bn is not None:
            _, seq, index = block.bn
            bn = _swap(seq, index, FoldedBatchNorm2d, {"bias": layer.bias_grid()})
            bn.weight.requires_grad_(False)
            _swap(block.seq, block.index, GridConv2d, {"weight": layer.weight_grid()})
        else:
            cls = GridLinear if isinstance(block.module, nn.Linear) else GridConv2d
            _swap(block.seq, block.index, cls, {"weight": layer.weight_grid(), "bias": layer.bias_grid()})
    return FixedPointSpec(float(input_scale), int(time_steps), tuple(layers))


def _bias_module(block: _Block) -> nn.Module:
    if block.bn is not None:
        _, seq, index = block.bn
        return seq[index]
    return block.module


def baked_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict of a fixed-point model with every gridded tensor replaced by its grid
    value: the plain SpikingVGG's keys, on-grid weights and biases (CPU copies)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for path, m in model.named_modules():
        if isinstance(m, _GRID_TYPES):
            for pname, grid in m.grids.items():
                t = getattr(m, pname).detach()
                state[f"{path}.{pname}"] = (grid.integers(t) / grid.unit).cpu()
    return state
