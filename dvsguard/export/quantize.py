"""From a trained spiking network to integer layers for Loihi: folding, then per-layer scaling.

Pipeline (the trained model is only read, never changed):

1. :func:`extract_layers` walks ``model.features`` then ``model.classifier`` (or a plain
   ``nn.Sequential``) through a type → handler registry and returns float
   :class:`FloatLayer` s: every Conv2d/Linear with its BatchNorm folded in
   (:func:`fold_bn`), the θ of the IF neuron that follows it (``None`` for the read-out
   layer), and the average pooling that precedes it (``pool`` = k for a k×k window).
2. :func:`quantize_layers` scales each layer to integers that netx and Loihi 2 can hold.

Average pooling folded into the next layer (exact):

* before a convolution with kernel K, padding p, stride 1: avgpool(k) then conv equals a
  convolution with kernel kK (every tap repeated over a k×k block, divided by k²),
  stride k and padding k·p, when H and W are divisible by k (:func:`pool_conv_kernel`).
  Proof: P[y] = k⁻¹ Σₐ X[ky+a], so Z[r] = Σ_q W[q] P[r+q−p] = Σ_{q,a} W[q]/k · X[k r + (kq+a) − kp].
* before a Linear after Flatten: repeat each weight over its k×k window, divided by k²
  (:func:`pool_dense_weight`); rows/columns that the floor of AvgPool drops get weight 0.

In integers the division by k² moves to the neuron: the integer kernel repeats the
integer weights unchanged while the bias and the threshold are multiplied by k². The
integer sums are then exactly k² times those of the unfolded layer, so the spikes match.

Integer mapping of an IF neuron (θ, hard reset, fires when u ≥ θ) to netx CUBA follows the
rules of :mod:`dvsguard.snn.fixed_point` (the trainer's fixed-point mode uses the same): with
scale s (integer units per float unit of the layer's input current), weights w = round(s·W)
as even integers in [−256, 254] (8-bit mantissa), bias b = round(s·B), and s chosen so that
s·θ = θ_int + 1/(2k²) with vThMant = k²·θ_int. netx fires when v > vThMant·2⁶ (strictly),
i.e. when the integer sum exceeds k²·θ_int, which is u ≥ θ for the integer sums, and no sum
can land on the float threshold (tie-free). iDecay = 4096 makes the current u the input of
this step only; vDecay = 0 keeps v (no leak), exactly like the IF neuron.

The scale is chosen per layer by :func:`dvsguard.snn.fixed_point.choose_scale`, or taken
from the checkpoint's fixed-point record (``scales``): a model fine-tuned in fixed point has
its weights on that grid already, and the exporter reproduces exactly its integers.

The first layer sees the frame counts c (graded events, 0…count_cap) instead of the
model's c / count_cap, so its float weights are divided by count_cap first.

The read-out Linear (no IF neuron) becomes a CUBA neuron that never fires: its voltage
accumulates Σ_t (W s_t + b)·2⁶ = 2⁶·s·k²·T · mean_t(logits), a positive multiple of the
mean logits, so its argmax is the model's prediction. Its scale is chosen so that this
sum stays within vThMant·2⁶ for any spike pattern (no spike, no clipping) unless that
would leave fewer than 5 bits of weight resolution, in which case it is reported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dvsguard.errors import ConfigError, ExportError
from dvsguard.snn.neuron import IFNeuron
from dvsguard.snn.fixed_point import (
    ACT_SHIFT,
    BIAS_MAX,
    BIAS_MIN,
    VTH_MAX,
    WEIGHT_MAX,
    WEIGHT_MIN,
    choose_scale,
    fold_bn,
    theta_int_of,
    vth_mant,
)

log = logging.getLogger(__name__)

@dataclass
class FloatLayer:
    """One synaptic layer of the trained model with BatchNorm folded in (float64).

    Attributes:
        name: module path of the Conv2d/Linear it comes from (e.g. ``features.0``).
        kind: ``"conv"`` or ``"dense"``.
        weight: conv ``[out, in, kH, kW]`` or dense ``[out, in]``.
        bias: ``[out]``.
        theta: threshold of the IF neuron after it; ``None`` for the read-out layer.
        stride, padding: conv only, (y, x).
        pool: k of the k×k average pooling folded in before this layer (1 = none).
        in_shape: input of the (unfolded) layer, ``(C, H, W)`` or ``(N,)``, after pooling.
        pre_pool_shape: input before the folded pooling (``(C, H, W)``), = in_shape if pool == 1.
        flatten: a Flatten precedes this dense layer.
        sources: module paths merged into it.
    """

    name: str
    kind: str
    weight: np.ndarray
    bias: np.ndarray
    theta: float | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    pool: int = 1
    in_shape: tuple[int, ...] = ()
    pre_pool_shape: tuple[int, ...] = ()
    flatten: bool = False
    sources: list[str] = field(default_factory=list)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.kind == "dense":
            return (self.weight.shape[0],)
        c, h, w = self.in_shape
        kh, kw = self.weight.shape[2:]
        return (
            self.weight.shape[0],
            (h + 2 * self.padding[0] - kh) // self.stride[0] + 1,
            (w + 2 * self.padding[1] - kw) // self.stride[1] + 1,
        )


@dataclass
class QLayer:
    """One integer layer as netx stores it (pooling already folded in).

    Attributes:
        name, kind, sources: as in :class:`FloatLayer`.
        weight: int16 (8-bit mantissa × 2), conv ``[out, in, kH, kW]`` (PyTorch order) or dense
            ``[out, in]``.
        bias: int64 ``[out]`` (bias_mant; the neuron adds bias·2⁶ every step).
        vth: vThMant (a spike when v > vth·2⁶).
        spiking: False for the read-out accumulator.
        stride, padding: conv only (y, x).
        in_shape, out_shape: ``(C, H, W)`` or ``(N,)`` of the folded layer.
        flatten: a Flatten precedes this dense layer.
        scale: s, integer units per float unit of the layer's current (before pooling fold).
        pool: k of the folded k×k pooling.
        clipped: number of values clipped to the hardware range, by parameter.
    """

    name: str
    kind: str
    weight: np.ndarray
    bias: np.ndarray
    vth: int
    spiking: bool
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    flatten: bool
    scale: float
    pool: int
    sources: list[str]
    clipped: dict[str, int] = field(default_factory=dict)

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.weight.shape[1:]))

    @property
    def neurons(self) -> int:
        return int(np.prod(self.out_shape))


@dataclass
class QuantizedNet:
    """Integer network: input description, layers, and how to read its output.

    Attributes:
        input_shape: ``(C, H, W)`` of one frame.
        input_scale: frame counts per model-input unit (count_cap): counts = x · input_scale.
        input_bits: message bits of the graded input events (enough for input_scale).
        time_steps: T, frames per sample (the reset interval).
        layers: the :class:`QLayer` s in order.
        output_scale: v of the read-out layer = output_scale · mean logits (2⁶·s·k²·T).
    """

    input_shape: tuple[int, int, int]
    input_scale: float
    input_bits: int
    time_steps: int
    layers: list[QLayer]
    output_scale: float
    warnings: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        """Extra Lava steps after the last frame until the read-out voltage holds all T frames:
        one step per layer (each synapse delays by one step), see :mod:`dvsguard.export.intsim`."""
        return len(self.layers)


# --------------------------------------------------------------------------- float folding


def pool_conv_kernel(weight: np.ndarray, k: int, padding: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """avgpool(k) followed by conv(weight, stride 1, padding) as one conv.

    Returns (kernel ``[out, in, k·kH, k·kW]`` = every tap repeated k×k times and divided
    by k² — multiply by k² for the integer form —, stride (k, k), padding (k·pH, k·pW)).
    """
    big = np.repeat(np.repeat(weight, k, axis=2), k, axis=3) / (k * k)
    return big, (k, k), (k * padding[0], k * padding[1])


def spread_over_pool(weight: np.ndarray, k: int, pre_pool_shape: tuple[int, int, int]) -> np.ndarray:
    """Each weight of a linear layer after avgpool(k) + flatten, copied over its k×k window.

    weight: ``[out, C·(H//k)·(W//k)]``; returns ``[out, C·H·W]`` (C, H, W flattening order) of the
    same dtype, 0 at the positions the pooling's floor drops. Not divided by k².
    """
    c, h, w = pre_pool_shape
    hp, wp = h // k, w // k
    out = weight.shape[0]
    wt = weight.reshape(out, c, hp, wp)
    big = np.zeros((out, c, h, w), dtype=weight.dtype)
    big[:, :, : hp * k, : wp * k] = np.repeat(np.repeat(wt, k, axis=2), k, axis=3)
    return big.reshape(out, c * h * w)


def pool_dense_weight(weight: np.ndarray, k: int, pre_pool_shape: tuple[int, int, int]) -> np.ndarray:
    """avgpool(k) + flatten + linear(weight ``[out, C·(H//k)·(W//k)]``) as one linear layer.

    Returns ``[out, C·H·W]`` float64 (C, H, W flattening order): each weight over its k×k window,
    divided by k²; positions dropped by the pooling's floor get 0.
    """
    return spread_over_pool(np.asarray(weight, dtype=np.float64), k, pre_pool_shape) / (k * k)


# --------------------------------------------------------------------------- model walk


def _is_if(m: nn.Module) -> bool:
    return isinstance(m, IFNeuron)


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of the layers in execution order."""
    if hasattr(model, "features") and hasattr(model, "classifier"):
        for part in ("features", "classifier"):
            seq = getattr(model, part)
            if not isinstance(seq, nn.Sequential):
                raise ExportError(f"{part}: expected an nn.Sequential, got {type(seq).__name__}")
            for name, m in seq.named_children():
                yield f"{part}.{name}", m
    elif isinstance(model, nn.Sequential):
        yield from model.named_children()
    else:
        raise ExportError(
            f"{type(model).__name__}: cannot export; expected a SpikingVGG (features + classifier) or an nn.Sequential"
        )


class _Walker:
    """State of the walk: the layers so far and what the next layer must absorb."""

    def __init__(self, input_shape: tuple[int, int, int]) -> None:
        self.layers: list[FloatLayer] = []
        self.shape: tuple[int, ...] = tuple(input_shape)
        self.pool = 1
        self.pre_pool_shape: tuple[int, ...] = tuple(input_shape)
        self.flatten = False
        self.open: FloatLayer | None = None  # a layer still waiting for BN / IF

    def check_closed(self, name: str, what: str) -> None:
        if self.open is not None:
            raise ExportError(
                f"{name}: {what} after {self.open.name} which has no IF neuron yet "
                "(only BatchNorm may sit between a Conv2d/Linear and its IF neuron)"
            )

    def add(self, layer: FloatLayer) -> None:
        layer.pool = self.pool
        layer.pre_pool_shape = self.pre_pool_shape
        layer.in_shape = self.shape
        layer.flatten = self.flatten
        self.layers.append(layer)
        self.open = layer
        self.pool, self.flatten = 1, False
        self.shape = layer.out_shape
        self.pre_pool_shape = self.shape


def _finite(name: str, what: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ExportError(f"{name}: {what} holds NaN or infinite values")
    return a


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv(w: _Walker, name: str, m: nn.Conv2d) -> None:
    w.check_closed(name, "Conv2d")
    if m.groups != 1 or _pair(m.dilation) != (1, 1) or _pair(m.stride) != (1, 1):
        raise ExportError(f"{name}: only Conv2d with stride 1, dilation 1 and groups 1 is supported, got {m}")
    if not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
        raise ExportError(f"{name}: only explicit zero padding is supported, got padding={m.padding!r}")
    if len(w.shape) != 3 or w.flatten:
        raise ExportError(f"{name}: Conv2d after Flatten is not supported")
    if w.shape[0] != m.in_channels:
        raise ExportError(f"{name}: expects {m.in_channels} input channels, the layer before gives {w.shape[0]}")
    weight = _finite(name, "weight", _np(m.weight))
    bias = _finite(name, "bias", _np(m.bias)) if m.bias is not None else np.zeros(m.out_channels)
    w.add(FloatLayer(name, "conv", weight, bias, stride=(1, 1), padding=_pair(m.padding), sources=[name]))
    c, h, wd = w.layers[-1].out_shape
    if h < 1 or wd < 1:
        raise ExportError(f"{name}: output would be empty for input {w.layers[-1].in_shape}")


def _linear(w: _Walker, name: str, m: nn.Linear) -> None:
    w.check_closed(name, "Linear")
    if len(w.shape) != 1:
        raise ExportError(f"{name}: Linear needs a Flatten before it (input is {w.shape})")
    if w.shape[0] != m.in_features:
        raise ExportError(f"{name}: expects {m.in_features} input features, the layer before gives {w.shape[0]}")
    weight = _finite(name, "weight", _np(m.weight))
    bias = _finite(name, "bias", _np(m.bias)) if m.bias is not None else np.zeros(m.out_features)
    w.add(FloatLayer(name, "dense", weight, bias, sources=[name]))


def _batchnorm(w: _Walker, name: str, m: nn.Module) -> None:
    layer = w.open
    want = "conv" if isinstance(m, nn.BatchNorm2d) else "dense"
    if layer is None or layer.kind != want or len(layer.sources) > 1:
        raise ExportError(f"{name}: {type(m).__name__} must directly follow a {'Conv2d' if want == 'conv' else 'Linear'}")
    if not m.track_running_stats or m.running_mean is None:
        raise ExportError(f"{name}: BatchNorm without running statistics cannot be folded")
    for what, t in (("running_mean", m.running_mean), ("running_var", m.running_var), ("weight", m.weight), ("bias", m.bias)):
        if t is not None:
            _finite(name, what, _np(t))
    layer.weight, layer.bias = fold_bn(layer.weight, layer.bias, m)
    _finite(name, "folded weight", layer.weight)
    layer.sources.append(name)


def _if(w: _Walker, name: str, m: nn.Module) -> None:
    layer = w.open
    if layer is None:
        raise ExportError(f"{name}: IF neuron without a Conv2d/Linear before it")
    theta = float(getattr(m, "threshold", 1.0))
    if not math.isfinite(theta) or theta <= 0:
        raise ExportError(f"{name}: IF threshold must be a positive number, got {theta}")
    layer.theta = theta
    layer.sources.append(name)
    w.open = None


def _avgpool(w: _Walker, name: str, m: nn.AvgPool2d) -> None:
    w.check_closed(name, "AvgPool2d")
    k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
    ok = (
        _pair(m.kernel_size) == (k, k)
        and _pair(m.stride if m.stride is not None else m.kernel_size) == (k, k)
        and _pair(m.padding) == (0, 0)
        and not m.ceil_mode
        and m.divisor_override is None
    )
    if not ok:
        raise ExportError(f"{name}: only square AvgPool2d with stride = kernel, no padding, floor mode is supported")
    if len(w.shape) != 3:
        raise ExportError(f"{name}: AvgPool2d after Flatten")
    c, h, wd = w.shape
    if h // k < 1 or wd // k < 1:
        raise ExportError(f"{name}: pooling {k}×{k} of a {h}×{wd} map leaves nothing")
    w.pool *= k
    w.shape = (c, h // k, wd // k)


def _flatten(w: _Walker, name: str, m: nn.Flatten) -> None:
    w.check_closed(name, "Flatten")
    if m.start_dim != 1 or m.end_dim != -1:
        raise ExportError(f"{name}: only Flatten(start_dim=1) is supported")
    if len(w.shape) == 3:
        w.flatten = True
        w.shape = (int(np.prod(w.shape)),)


def _identity(w: _Walker, name: str, m: nn.Module) -> None:
    """Dropout and Identity are the identity at inference, which is what is exported."""


Handler = Callable[[_Walker, str, Any], None]

#: Module type → handler. Anything else is refused with an ExportError naming the layer.
HANDLERS: dict[type, Handler] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batchnorm,
    nn.BatchNorm1d: _batchnorm,
    nn.AvgPool2d: _avgpool,
    nn.Flatten: _flatten,
    nn.Dropout: _identity,
    nn.Identity: _identity,
}


def extract_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[FloatLayer]:
    """Float layers of ``model`` (see module docstring). input_shape: ``(C, H, W)`` of a frame.

    Raises ExportError naming the first module that cannot be mapped (MaxPool2d, a
    stride-2 conv, a layer with NaN weights, BatchNorm in the wrong place, …).
    """
    w = _Walker(tuple(int(v) for v in input_shape))
    for name, m in _walk(model):
        if _is_if(m):
            _if(w, name, m)
            continue
        handler = HANDLERS.get(type(m))
        if handler is None:
            raise ExportError(f"{name}: cannot map {type(m).__name__} to Loihi (supported: Conv2d, BatchNorm, IF, AvgPool2d, Flatten, Linear)")
        handler(w, name, m)
    if not w.layers:
        raise ExportError(f"{type(model).__name__}: no Conv2d/Linear layer to export")
    last = w.layers[-1]
    if last.theta is not None or last.kind != "dense":
        raise ExportError(f"{last.name}: the network must end with a Linear read-out layer without IF neuron")
    for layer in w.layers[:-1]:
        if layer.theta is None:
            raise ExportError(f"{layer.name}: hidden layer without IF neuron")
    if w.pool != 1:
        raise ExportError("the network ends with an AvgPool2d that no layer consumes")
    for layer in w.layers:
        if layer.kind == "conv" and layer.pool > 1:
            c, h, wd = layer.pre_pool_shape
            if h % layer.pool or wd % layer.pool:
                raise ExportError(
                    f"{layer.name}: cannot fold the {layer.pool}×{layer.pool} pooling of a {h}×{wd} map into it "
                    "(the size must be divisible by the pooling)"
                )
    return w.layers


# --------------------------------------------------------------------------- integer scaling


def _even_round_inplace(x: np.ndarray) -> np.ndarray:
    """x ← 2·round(x/2), in place (a dense layer's weights can be hundreds of MB)."""
    np.divide(x, 2.0, out=x)
    np.round(x, out=x)
    np.multiply(x, 2.0, out=x)
    return x


GRID_TOLERANCE = 1e-3  # integer units: a recorded grid's weights may be off by float rounding only


def _recorded_scale(layer: FloatLayer, scale: float, weight: np.ndarray, bias: np.ndarray) -> tuple[float, int | None]:
    """Check a recorded scale against the layer: (s, θ_int); ExportError when the layer's
    weights and biases are not on that grid (to float rounding) or θ is not tie-free."""
    if not (math.isfinite(scale) and scale > 0):
        raise ExportError(f"{layer.name}: recorded scale {scale!r} is not a positive number")
    theta_int = None
    if layer.theta is not None:
        try:
            theta_int = theta_int_of(layer.name, scale, layer.theta, layer.pool)
        except ConfigError as e:
            raise ExportError(str(e)) from None
    for what, values, step in (("weights", scale * weight, 2.0), ("biases", scale * bias, 1.0)):
        off = float(np.abs(values - step * np.round(values / step)).max(initial=0.0))
        if off > GRID_TOLERANCE:
            raise ExportError(
                f"{layer.name}: {what} are not on the recorded fixed-point grid (off by up to {off:.3g} integer "
                "units); was the checkpoint changed after fixed-point training?"
            )
    return scale, theta_int


def quantize_layer(
    layer: FloatLayer, input_scale: float, time_steps: int, first: bool, scale: float | None = None
) -> tuple[QLayer, list[str]]:
    """Integer form of one float layer (see the module docstring for the maths).

    input_scale: counts per float input unit for the first layer (its weights are divided
    by it). scale: a recorded s (from fixed-point training) instead of the scale rule.
    Returns the QLayer and warnings about clipped values.
    """
    weight = layer.weight / input_scale if first else layer.weight
    bias = layer.bias
    p2 = layer.pool * layer.pool
    if scale is None:
        s, notes = choose_scale(layer.name, weight, bias, layer.theta, layer.pool, time_steps,
                                input_max=input_scale if first else 1.0)
        theta_int = None if layer.theta is None else theta_int_of(layer.name, s, layer.theta, layer.pool)
    else:
        s, theta_int = _recorded_scale(layer, scale, weight, bias)
        notes = []
    vth = VTH_MAX if theta_int is None else vth_mant(theta_int, layer.pool)
    w_int = _even_round_inplace(np.multiply(weight, s))
    b_int = np.round(s * bias) * p2
    clipped = {
        "weight": int(np.count_nonzero(w_int < WEIGHT_MIN) + np.count_nonzero(w_int > WEIGHT_MAX)),
        "bias": int(((b_int < BIAS_MIN) | (b_int > BIAS_MAX)).sum()),
    }
    w_int = np.clip(w_int, WEIGHT_MIN, WEIGHT_MAX, out=w_int).astype(np.int16)
    b_int = np.clip(b_int, BIAS_MIN, BIAS_MAX).astype(np.int64)
    for what, n in clipped.items():
        if n:
            notes.append(f"{layer.name}: {n} {what} value(s) clipped to the hardware range")
    if vth > VTH_MAX:
        notes.append(f"{layer.name}: threshold {vth} clipped to {VTH_MAX}")
        clipped["threshold"] = 1
        vth = VTH_MAX
    stride, padding = layer.stride, layer.padding
    if layer.kind == "conv" and layer.pool > 1:
        w_int = np.repeat(np.repeat(w_int, layer.pool, axis=2), layer.pool, axis=3)
        stride = (layer.pool, layer.pool)
        padding = (layer.pool * layer.padding[0], layer.pool * layer.padding[1])
        in_shape = layer.pre_pool_shape
    elif layer.kind == "dense" and layer.pool > 1:
        w_int = spread_over_pool(w_int, layer.pool, layer.pre_pool_shape)  # k²·(w/k²): the integer form
        in_shape = (int(np.prod(layer.pre_pool_shape)),)
    else:
        in_shape = layer.in_shape if layer.kind == "conv" or not layer.flatten else (int(np.prod(layer.in_shape)),)
    if layer.kind == "dense":
        in_shape = (w_int.shape[1],)
    if not np.any(w_int):
        notes.append(f"{layer.name}: all integer weights are zero")
    q = QLayer(
        name=layer.name,
        kind=layer.kind,
        weight=w_int,
        bias=b_int,
        vth=int(vth),
        spiking=layer.theta is not None,
        stride=stride,
        padding=padding,
        in_shape=tuple(int(v) for v in in_shape),
        out_shape=tuple(int(v) for v in layer.out_shape),
        flatten=layer.flatten,
        scale=float(s),
        pool=layer.pool,
        sources=list(layer.sources),
        clipped=clipped,
    )
    return q, notes


def quantize_layers(
    layers: list[FloatLayer],
    input_shape: tuple[int, int, int],
    input_scale: float,
    time_steps: int,
    scales: dict[str, float] | None = None,
) -> QuantizedNet:
    """Scale every float layer to integers (see the module docstring).

    input_scale: count_cap (frame counts per model-input unit); time_steps: T; scales:
    layer name → recorded s for every layer (a fixed-point fine-tuned model), or None for
    the scale rule.
    """
    if not (input_scale >= 1 and float(input_scale).is_integer()):
        raise ExportError(f"input scale (count cap) must be a positive integer, got {input_scale}")
    if time_steps < 1:
        raise ExportError(f"time steps must be ≥ 1, got {time_steps}")
    if scales is not None:
        names = [layer.name for layer in layers]
        missing = [n for n in names if n not in scales]
        extra = sorted(set(scales) - set(names))
        if missing or extra:
            which = f"no scale for layer {missing[0]}" if missing else f"a scale for an unknown layer {extra[0]}"
            raise ExportError(f"the fixed-point record holds {which} (another architecture?)")
    qlayers: list[QLayer] = []
    warnings: list[str] = []
    for i, layer in enumerate(layers):
        q, notes = quantize_layer(layer, input_scale, time_steps, first=(i == 0),
                                  scale=None if scales is None else float(scales[layer.name]))
        qlayers.append(q)
        warnings += notes
    for note in warnings:
        log.warning("export: %s", note)
    last = qlayers[-1]
    output_scale = (2**ACT_SHIFT) * last.scale * last.pool**2 * time_steps
    input_bits = max(1, int(math.ceil(math.log2(input_scale + 1))))
    return QuantizedNet(
        input_shape=tuple(int(v) for v in input_shape),
        input_scale=float(input_scale),
        input_bits=input_bits,
        time_steps=int(time_steps),
        layers=qlayers,
        output_scale=float(output_scale),
        warnings=warnings,
    )


def quantize_model(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    input_scale: float,
    time_steps: int,
    scales: dict[str, float] | None = None,
) -> QuantizedNet:
    """:func:`extract_layers` then :func:`quantize_layers`; the model is only read."""
    with torch.no_grad():
        layers = extract_layers(model, input_shape)
    return quantize_layers(layers, input_shape, input_scale, time_steps, scales)
