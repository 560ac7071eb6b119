"""Bit-exact integer simulator of a netx file (numpy only), and the float-vs-integer comparison.

It reads a ``.net`` file the way lava-dl 0.6.0 netx does and applies the fixed-point
semantics of Lava's ``fixed_pt`` models (lava-nc 0.10.0):

* dense synapses (``PyDenseModelBitAcc``): netx's ``optimize_weight_bits`` rescales the
  stored weights (shift by ``scale_bits``, ``weight_exp = −scale_bits``), the model clips
  them to 8 bits for the sign mode it determines, drops the truncated LSBs, and shifts the
  accumulated input back by ``weight_exp`` (arithmetic shift) — all reproduced by
  :func:`dense_effective`;
* conv synapses (``PyConvModelFixed``): the stored kernel as is, output wrapped to signed
  24 bits;
* CUBA neurons (``PyLifResetModelBitAcc``): u ← sign(u)·(|u·(4096−iDecay)| ≫ 12) + (a ≪ 6),
  wrapped to 24 bits; v ← sign(v)·(|v·(4096−vDecay)| ≫ 12) + u + (bias ≪ 6), clipped to
  ±(2²³−1); a spike when v > vThMant ≪ 6, then v ← 0;
* graded input events enter the first synapse as integers (binary when the file's
  ``input_bits`` is 0);
* an input layer with a neuron (lava-dl's ``Input`` block, as in its PilotNet SNN) is a
  layer of its own: the input values enter that neuron's current directly — no synapse, no
  step of delay, no bias — and the layer's stored weight and bias, lava-dl's input
  transform that its data pipeline applies beforehand, are only reported
  (:attr:`SimNet.input_transform`); a file without an input layer (lava-dl's MNIST) takes
  the first dense layer's fan-in as its input.

Conventions: shapes are stored (C, H, W) and netx reverses them to Lava's (W, H, C); conv
kernels are stored as PyTorch's ``[out, in, kh, kw]`` cross-correlation kernels, which netx
flips for Lava's convolution (scipy's ``convolve2d`` flips them back), so the simulator keeps
(C, H, W) and uses the stored kernel as a cross-correlation. LOIHI and CUBA neurons are the
same LIF (:func:`_neuron`); what netx reads but this simulator does not run — other layer
types (pool, average, dense_rec, dense_comp…), other neuron types (SDNN, RF…), graded
output spikes, synaptic delays, dilation, groups, neuron-wise biases — is refused with a
one-line ExportError naming the layer and the feature. This is checked against Lava on
dvsguard's exported files, hand-made ones, and lava-dl's own PilotNet SNN and MNIST files
(``tests/export/test_lava.py``).

Timing in Lava: every synapse sends what it computed in the previous step, so layer k
(1-based) integrates frame j of sample s at step s·T + D + k + j (the source sends frame j
at step s·T + j + 1; D = :attr:`SimNet.input_delay` is 1, or 0 when the first layer is an
input neuron, which integrates the source in the step it is sent).
``Network(reset_interval=T, reset_offset=D)`` resets layer k at the steps ≡ D + k (mod T),
i.e. exactly when frame 0 of a sample reaches it, so each layer
integrates the T frames of one sample from a zero state and nothing leaks between
samples, with no idle steps. :func:`simulate` therefore runs every sample on its own,
layer after layer over its T frames (fast, vectorised over samples); :func:`stream`
replays the literal step-by-step Lava timeline with its one-step delay per layer (used to
check that equivalence against Lava's own recordings). The read-out layer's voltage after
step (s+1)·T + L − 1 + D (L layers) is the output of sample s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dvsguard.errors import ExportError

log = logging.getLogger(__name__)

# Lava's own arithmetic, stated here independently of dvsguard.snn.fixed_point (the rules the
# exporter and trainer follow), so that this simulator checks them instead of sharing them;
# it also keeps this module free of torch.
STATE_MAX = 2**23  # Lava's max_uv_val for 24-bit u, v
ACT_SHIFT = 6
EVENTS = ("current_wrap", "voltage_clip", "int32_overflow", "conv_wrap", "readout_spikes", "spike_after_clip")
DECAY_SHIFT = 12
DECAY_UNITY = 4096


@dataclass
class SimLayer:
    """One netx block as Lava runs it.

    Attributes:
        kind: ``conv``, ``dense`` or ``input`` (an input layer with a neuron: the input values
            enter its current unweighted, with no synapse and no step of delay).
        weight: effective integer weights, int32 (dense: after netx/Lava's rescale, clip, truncate;
            int32 holds every netx weight shifted by its scale, at half the memory of int64;
            input: empty).
        weight_exp: dense only: accumulated input is shifted by this (≤ 0: right shift).
        bias: ``[out]`` bias mantissa (int64).
        vth, i_decay, v_decay: neuron parameters (vThMant, iDecay, vDecay).
        in_shape, out_shape: ``(C, H, W)`` or ``(N,)``.
        stride, padding: conv (y, x).
        flatten: the input is a (C, H, W) map flattened in C, H, W order.
        graded: the input is graded (integers) rather than binary spikes.
    """

    kind: str
    weight: np.ndarray
    bias: np.ndarray
    vth: int
    i_decay: int
    v_decay: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    weight_exp: int = 0
    flatten: bool = False
    graded: bool = False


@dataclass
class SimNet:
    """A netx file as the simulator runs it, with the file's root attributes.

    ``input_transform``: for an input layer with a neuron, its stored ``weight`` and ``bias``
    (64 and 0 when absent, as netx reads them): lava-dl's input transform, which its data
    pipeline applies to the data before the network; netx's ``Input`` block does not apply
    it, so neither does :func:`simulate`. None otherwise.
    """

    path: Path
    input_shape: tuple[int, ...]
    layers: list[SimLayer]
    attrs: dict[str, Any] = field(default_factory=dict)
    input_transform: dict[str, int] | None = None

    @property
    def input_delay(self) -> int:
        """Lava steps from the source sending a frame to the first layer integrating it: 1
        through a synapse (it sends what it computed in the previous step), 0 into an input
        neuron."""
        return 0 if self.layers[0].kind == "input" else 1

    @property
    def time_steps(self) -> int | None:
        t = self.attrs.get("time_steps")
        return None if t is None else int(t)

    @property
    def output_scale(self) -> float | None:
        s = self.attrs.get("output_scale")
        return None if s is None else float(s)


@dataclass
class SimResult:
    """Output of :func:`simulate` for N samples.

    Attributes:
        v_out: int64 ``[N, n_out]``: read-out voltage after each sample's T frames.
        spikes: per layer bool ``[N, T, *out_shape]`` (when recorded), frame-aligned.
        events: counts of saturation events: ``current_wrap`` (u wrapped at 24 bits),
            ``voltage_clip`` (v clipped), ``int32_overflow`` (a ≪ 6 beyond int32, where
            Lava's own arithmetic would overflow), ``conv_wrap`` (conv output wrapped),
            ``readout_spikes`` (the read-out neuron fired, losing its voltage),
            ``spike_after_clip`` (a neuron fired after its voltage was clipped at the
            negative limit: only then can a clip change a spike of a hidden layer).
        layer_events: the same counts per layer.
    """

    v_out: np.ndarray
    spikes: list[np.ndarray] | None
    events: dict[str, int]
    layer_events: list[dict[str, int]] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _str(ds: h5py.Dataset) -> str:
    value = ds[0] if len(ds.shape) > 0 else ds[()]
    return value.decode("ascii") if isinstance(value, bytes | np.bytes_) else str(value)


def _pair_yx(v: Any) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def dense_effective(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """(weights as Lava's fixed-point Dense uses them, weight_exp) for stored dense weights.

    Reproduces lava-dl's ``netx.utils.optimize_weight_bits`` followed by lava-nc's
    ``clip_weights(…, 8)`` and ``truncate_weights`` in ``PyDenseModelBitAcc``.
    """
    w = np.asarray(weight, dtype=np.int32)
    max_w, min_w = int(w.max()), int(w.min())
    if max_w > 254 and min_w < 0:
        w = np.clip(w, -256, 254)
        max_w = int(w.max())
    if min_w < -256 and max_w > 0:
        w = np.clip(w, -256, 254)
        min_w = int(w.min())
    if max_w < 0:
        is_signed, scale = 0, -256 / min_w
    elif min_w >= 0:
        if max_w == 0:
            raise ExportError("dense layer with all-zero weights: netx cannot load it")
        is_signed, scale = 0, 255 / max_w
    else:
        is_signed = 1
        scale = min(127 / max_w if max_w > 0 else math.inf, -128 / min_w)
    scale_bits = int(np.floor(np.log2(scale))) + is_signed
    if scale_bits < 0:
        raise ExportError(f"dense weights in [{min_w}, {max_w}] are outside the 8-bit range netx can map")
    n = 8
    while n > 0 and np.any(w & ((1 << n) - 1)):  # not every weight a multiple of 2**n
        n -= 1
    n -= is_signed
    num_weight_bits = 8 - scale_bits - n
    weight_exp = -scale_bits
    w = w << scale_bits
    # lava-nc's PyDenseModelBitAcc: determine_sign_mode → clip_weights → truncate_weights
    if w.min() >= 0:
        mode = "exc"
    elif w.max() <= 0:
        mode = "inh"
    else:
        mode = "mixed"
    mixed = int(mode == "mixed")
    if mode == "inh":
        w = -w
    w = np.clip(w, -(2**8) * mixed, 2**8 - 1)
    trunc = 8 - num_weight_bits + mixed
    w = (w >> trunc) << trunc
    if mode == "inh":
        w = -w
    return w, weight_exp


@dataclass
class ReadState:
    """What the layer readers share while :func:`load_netx` walks the layer groups in order.

    Attributes:
        bits: message bits of the input events (0 = binary).
        input_shape: the network's input shape, once known: the ``input`` layer's (C, H, W),
            or ``(n,)`` from a first dense layer's weights when the file has no input layer.
        shape: output shape of the last layer read (the next layer's input shape).
        flatten: a ``flatten`` marker is pending for the next dense layer.
        layers: the layers read so far.
        input_transform: the input layer's stored weight and bias (see :class:`SimNet`).
    """

    bits: int
    input_shape: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    flatten: bool = False
    layers: list[SimLayer] = field(default_factory=list)
    input_transform: dict[str, int] | None = None


Reader = Callable[[h5py.Group, ReadState, str], None]
"""``reader(group, state, where)``: read one layer group into ``state``; ``where`` names the group in errors."""

#: neuron types netx maps onto Lava's fixed-point LIF (both CUBA with current and voltage decays)
NEURON_TYPES = ("CUBA", "LOIHI")


def _shape(g: h5py.Group) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(g["shape"][()]).reshape(-1))


def _scalar(g: h5py.Group, name: str, default: int) -> int:
    return int(np.asarray(g[name][()]).reshape(-1)[0]) if name in g else default


def _neuron(g: h5py.Group, where: str) -> dict[str, int]:
    """A layer's ``neuron`` group → the :class:`SimLayer` keywords ``vth``, ``i_decay``, ``v_decay``.

    netx maps CUBA and LOIHI alike onto Lava's LIF with du = iDecay − 1 and dv = vDecay, and
    Lava's fixed-point LIF adds 1 to du, so per step the current loses iDecay/4096 of itself
    and the voltage vDecay/4096. Fields netx does not read are ignored as there: refDelay
    (Lava's LIF has no refractory period), gradedSpike, theta, tauRho, scaleRho, wgtExp.
    """
    if "neuron" not in g:
        raise ExportError(f"{where}: no neuron group (netx's default integrator neuron is not supported)")
    neuron = g["neuron"]
    ntype = _str(neuron["type"])
    if ntype not in NEURON_TYPES:
        raise ExportError(f"{where}: neuron type {ntype!r} is not supported (only {', '.join(NEURON_TYPES)})")
    if _scalar(neuron, "messageBits", 0) > 0:
        raise ExportError(f"{where}: graded output spikes (neuron messageBits > 0) are not supported")
    names = {"vth": "vThMant", "i_decay": "iDecay", "v_decay": "vDecay"}
    missing = [name for name in names.values() if name not in neuron]
    if missing:
        raise ExportError(f"{where}: neuron has no {', '.join(missing)}")
    fields = {key: _scalar(neuron, name, 0) for key, name in names.items()}
    for key in ("i_decay", "v_decay"):
        if not 0 <= fields[key] <= DECAY_UNITY:
            raise ExportError(f"{where}: neuron {names[key]} {fields[key]} is outside 0..{DECAY_UNITY}")
    return fields


def _bias(g: h5py.Group, n: int, where: str) -> np.ndarray:
    """The layer's bias mantissas, int64 ``[n]`` (one per output channel or neuron; zeros when absent)."""
    if "bias" not in g:
        return np.zeros(n, dtype=np.int64)
    bias = np.asarray(g["bias"][()]).astype(np.int64).reshape(-1)
    if bias.size != n:
        raise ExportError(f"{where}: bias of {bias.size} values for {n} output channels (only per-channel biases are supported)")
    return bias


def read_input(g: h5py.Group, r: ReadState, where: str) -> None:
    """``input`` layer: the frame shape (C, H, W) as stored (netx reverses it to Lava's (W, H, C)).

    With a neuron it is a layer of its own (kind ``input``): netx's ``Input`` block feeds the
    input values straight into that neuron's current, with no synapse, no bias, and without
    the file's weight and bias (kept as ``input_transform``).
    """
    if r.shape is not None:
        raise ExportError(f"{where}: an input layer after the first layer")
    shape = _shape(g)
    r.input_shape = r.shape = shape
    if "neuron" not in g:
        return
    r.layers.append(
        SimLayer(
            kind="input",
            weight=np.zeros(0, dtype=np.int32),
            bias=np.zeros(shape[0], dtype=np.int64),
            in_shape=shape,
            out_shape=shape,
            graded=True,
            **_neuron(g, where),
        )
    )
    r.input_transform = {"weight": _scalar(g, "weight", 64), "bias": _scalar(g, "bias", 0)}


def read_flatten(g: h5py.Group, r: ReadState, where: str) -> None:
    """``flatten`` marker: the next dense layer reads its (C, H, W) input flattened."""
    r.flatten = True


def _synapse_layer(g: h5py.Group, r: ReadState, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Checks and fields a conv and a dense layer share: (stored weights, SimLayer keywords)."""
    if "delay" in g:
        raise ExportError(f"{where}: synaptic delays are not supported")
    if "weight" not in g:
        raise ExportError(f"{where}: no weight")
    if isinstance(g["weight"], h5py.Group):
        raise ExportError(f"{where}: complex weights ({', '.join(g['weight'])}) are not supported")
    weight = g["weight"][()].astype(np.int32)
    common = dict(out_shape=_shape(g), graded=(not r.layers and r.bits > 0), **_neuron(g, where))
    return weight, common


def read_conv(g: h5py.Group, r: ReadState, where: str) -> None:
    """``conv`` layer: kernel ``[out, in, kh, kw]`` used as stored, stride and padding (y, x)."""
    weight, common = _synapse_layer(g, r, where)
    shape = r.shape
    if shape is None:
        raise ExportError(f"{where}: no input layer before it (the input shape is unknown)")
    if len(shape) != 3:
        raise ExportError(f"{where}: conv after a flat layer")
    if "dilation" in g and _pair_yx(g["dilation"][()]) != (1, 1):
        raise ExportError(f"{where}: dilation is not supported")
    if "groups" in g and int(np.asarray(g["groups"][()]).reshape(-1)[0]) != 1:
        raise ExportError(f"{where}: groups are not supported")
    weight = weight.reshape(weight.shape[:4])
    layer = SimLayer(
        kind="conv",
        weight=weight,
        bias=_bias(g, weight.shape[0], where),
        in_shape=shape,
        stride=_pair_yx(g["stride"][()]),
        padding=_pair_yx(g["padding"][()]),
        **common,
    )
    c, h, w = shape
    kh, kw = weight.shape[2:]
    expect = (
        weight.shape[0],
        (h + 2 * layer.padding[0] - kh) // layer.stride[0] + 1,
        (w + 2 * layer.padding[1] - kw) // layer.stride[1] + 1,
    )
    if weight.shape[1] != c or expect != layer.out_shape:
        raise ExportError(f"{where}: shape {layer.out_shape} does not follow from input {shape} and kernel {weight.shape}")
    r.layers.append(layer)
    r.shape = layer.out_shape


def read_dense(g: h5py.Group, r: ReadState, where: str) -> None:
    """``dense`` layer: weights ``[out, in]`` as Lava's fixed-point Dense uses them (:func:`dense_effective`).

    Its output shape is flat, ``(N,)``, whatever shape is stored (netx takes the product). As
    the first layer of a file without an input layer it sets the input shape to its fan-in.
    """
    weight, common = _synapse_layer(g, r, where)
    n_out = int(np.prod(common["out_shape"]))
    common["out_shape"] = (n_out,)
    if weight.ndim == 1:
        weight = weight.reshape(n_out, -1)
    if r.shape is None:
        r.input_shape = r.shape = (weight.shape[-1],)
    shape = r.shape
    n_in = int(np.prod(shape))
    if weight.shape != (n_out, n_in):
        raise ExportError(f"{where}: weight {weight.shape} does not match input {shape} → {n_out}")
    eff, exp = dense_effective(weight)
    layer = SimLayer(
        kind="dense",
        weight=eff,
        weight_exp=exp,
        bias=_bias(g, n_out, where),
        in_shape=(n_in,),
        flatten=r.flatten or len(shape) > 1,
        **common,
    )
    r.flatten = False
    r.layers.append(layer)
    r.shape = layer.out_shape


#: netx layer type → reader (the reverse of :data:`dvsguard.export.netx.WRITERS`).
READERS: dict[str, Reader] = {
    "input": read_input,
    "flatten": read_flatten,
    "conv": read_conv,
    "dense": read_dense,
}


def load_netx(path: str | os.PathLike[str], input_bits: int | None = None) -> SimNet:
    """Read a netx HDF5 file (dvsguard's or lava-dl's own) into a :class:`SimNet`.

    input_bits: message bits of the input events (default: the file's ``input_bits``
    attribute, else 0 = binary; an input neuron takes graded values regardless). Each layer
    group is read by the :data:`READERS` entry of its ``type``. Raises a one-line
    ExportError naming the layer and the feature for anything this simulator does not run
    (pool, average, recurrent or complex layers, other neuron types, graded output spikes,
    delays, dilation, groups…).
    """
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ExportError(f"{path}: not a readable netx file ({e})") from e
    with f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        if "layer" not in f:
            raise ExportError(f"{path}: no 'layer' group (not a netx file)")
        groups = f["layer"]
        reading = ReadState(bits=int(attrs.get("input_bits", 0) if input_bits is None else input_bits))
        for i in range(len(groups)):
            if str(i) not in groups:
                raise ExportError(f"{path}: layer group '{i}' is missing")
            g = groups[str(i)]
            kind = _str(g["type"])
            where = f"{path}: layer {i} ({kind})"
            if kind not in READERS:
                raise ExportError(f"{where}: layer type {kind!r} is not supported (only {', '.join(READERS)})")
            READERS[kind](g, reading, where)
        if reading.input_shape is None:
            raise ExportError(f"{path}: no input layer")
        if all(layer.kind == "input" for layer in reading.layers):
            raise ExportError(f"{path}: no conv or dense layer")
    return SimNet(path=path, input_shape=reading.input_shape, layers=reading.layers, attrs=attrs, input_transform=reading.input_transform)


# --------------------------------------------------------------------------- synapses


def _conv(x: np.ndarray, layer: SimLayer, chunk: int = 64) -> np.ndarray:
    """Cross-correlation of x ``[B, C, H, W]`` (ints) with the layer's kernel → int64 ``[B, O, Ho, Wo]``."""
    w = layer.weight
    o, c, kh, kw = w.shape
    (sy, sx), (py, px) = layer.stride, layer.padding
    _, ho, wo = layer.out_shape
    bound = float(np.abs(w).sum(axis=(1, 2, 3)).max(initial=0)) * float(np.abs(x).max(initial=0))
    dtype = np.float32 if bound < 2**24 else np.float64  # exact integer sums either way
    wm = w.reshape(o, -1).T.astype(dtype)
    out = np.empty((x.shape[0], o, ho, wo), dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk].astype(dtype)
        xp = np.pad(xb, ((0, 0), (0, 0), (py, py), (px, px)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
        win = win[:, :, : sy * (ho - 1) + 1 : sy, : sx * (wo - 1) + 1 : sx]  # [b, C, Ho, Wo, kh, kw]
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(xb.shape[0] * ho * wo, c * kh * kw)
        res = cols @ wm  # [b·Ho·Wo, O]
        out[start : start + chunk] = np.rint(res).astype(np.int64).reshape(xb.shape[0], ho, wo, o).transpose(0, 3, 1, 2)
    return out


def _dense(x: np.ndarray, layer: SimLayer) -> np.ndarray:
    """x ``[B, n_in]`` (ints) → int64 ``[B, n_out]`` including the weight exponent shift."""
    w = layer.weight
    bound = float(np.abs(w).sum(axis=1).max(initial=0)) * float(np.abs(x).max(initial=0))
    dtype = np.float32 if bound < 2**24 else np.float64
    acc = np.rint(x.astype(dtype) @ w.T.astype(dtype)).astype(np.int64)
    e = layer.weight_exp
    return acc << e if e > 0 else acc >> -e


def synapse(layer: SimLayer, x: np.ndarray, events: dict[str, int] | None = None) -> np.ndarray:
    """Synaptic input of ``layer`` for inputs x ``[B, *in_shape]`` (spikes or graded ints);
    an input neuron's is x itself."""
    if layer.kind == "input":
        return x.astype(np.int64)
    if not layer.graded:
        x = (x != 0).astype(np.int64)
    if layer.kind == "conv":
        a = _conv(x, layer)
        wrapped = (a + (1 << 23)) % (1 << 24) - (1 << 23)  # lava.proc.conv.utils.signed_clamp(…, 24)
        if events is not None:
            events["conv_wrap"] = events.get("conv_wrap", 0) + int((wrapped != a).sum())
        return wrapped
    return _dense(x.reshape(x.shape[0], -1), layer)


# --------------------------------------------------------------------------- neurons


def _decay(x: np.ndarray, decay: int) -> np.ndarray:
    if decay == 0:
        return x.copy()
    if decay == DECAY_UNITY:
        return np.zeros_like(x)
    d = x * (DECAY_UNITY - decay)
    return np.sign(d) * (np.abs(d) >> DECAY_SHIFT)


def neuron_step(
    u: np.ndarray,
    v: np.ndarray,
    a: np.ndarray,
    layer: SimLayer,
    events: dict[str, int] | None = None,
    clipped_low: np.ndarray | None = None,
) -> np.ndarray:
    """One CUBA step in place on int64 u, v given synaptic input a; returns the spikes (bool).

    clipped_low (bool, v's shape, updated in place) remembers the neurons whose voltage was
    clipped at the negative limit since their last spike; a spike of such a neuron is counted
    as ``spike_after_clip`` (the one way a negative clip can change the spikes).
    """
    a6 = a << ACT_SHIFT
    if events is not None:
        over = int((np.abs(a6) >= 2**31).sum())
        if over:
            events["int32_overflow"] = events.get("int32_overflow", 0) + over
    cur = _decay(u, layer.i_decay) + a6
    wrapped = np.where(cur > STATE_MAX, cur - 2 * STATE_MAX, cur)
    wrapped = np.where(wrapped <= -STATE_MAX, cur + 2 * STATE_MAX, wrapped)
    if events is not None:
        events["current_wrap"] = events.get("current_wrap", 0) + int((wrapped != cur).sum())
    u[...] = wrapped
    bias = layer.bias.reshape((-1,) + (1,) * (len(layer.out_shape) - 1)) << ACT_SHIFT
    vnew = _decay(v, layer.v_decay) + u + bias
    clipped = np.clip(vnew, -STATE_MAX + 1, STATE_MAX - 1)
    if events is not None:
        events["voltage_clip"] = events.get("voltage_clip", 0) + int((clipped != vnew).sum())
    spikes = clipped > (layer.vth << ACT_SHIFT)
    if clipped_low is not None:
        clipped_low |= vnew < clipped
        if events is not None:
            events["spike_after_clip"] = events.get("spike_after_clip", 0) + int((spikes & clipped_low).sum())
        clipped_low &= ~spikes
    clipped[spikes] = 0
    v[...] = clipped
    return spikes


# --------------------------------------------------------------------------- simulation


def _check_frames(net: SimNet, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 2 + len(net.input_shape) or tuple(frames.shape[2:]) != tuple(net.input_shape):
        raise ExportError(
            f"{net.path.name}: input frames must be [N, T, {', '.join(map(str, net.input_shape))}], got {frames.shape}"
        )
    if not np.issubdtype(frames.dtype, np.integer):
        if not np.all(frames == np.round(frames)):
            raise ExportError(f"{net.path.name}: input frames must be integer counts")
        frames = frames.astype(np.int64)
    return frames.astype(np.int64)


def simulate(net: SimNet, frames: np.ndarray, record: bool = False, batch: int = 16) -> SimResult:
    """Run N samples, each from a zero state over its T frames (module docstring).

    frames: int ``[N, T, *input_shape]`` (counts or spikes). Returns a :class:`SimResult`
    whose ``v_out`` equals Lava's read-out voltage and whose ``spikes`` (with ``record``)
    equal Lava's spikes of every layer, frame-aligned.
    """
    frames = _check_frames(net, frames)
    n, t = frames.shape[:2]
    events: dict[str, int] = dict.fromkeys(EVENTS, 0)
    v_out = np.zeros((n, int(np.prod(net.layers[-1].out_shape))), dtype=np.int64)
    spikes: list[np.ndarray] | None = (
        [np.zeros((n, t, *layer.out_shape), dtype=bool) for layer in net.layers] if record else None
    )
    layer_events: list[dict[str, int]] = [dict.fromkeys(events, 0) for _ in net.layers]
    for start in range(0, n, batch):
        x = frames[start : start + batch]  # [b, T, ...]
        b = x.shape[0]
        for k, layer in enumerate(net.layers):
            ev = layer_events[k]
            a = synapse(layer, x.reshape(b * t, *x.shape[2:]), ev).reshape(b, t, *layer.out_shape)
            u = np.zeros((b, *layer.out_shape), dtype=np.int64)
            v = np.zeros_like(u)
            low = np.zeros(u.shape, dtype=bool)
            s = np.zeros((b, t, *layer.out_shape), dtype=bool)
            for j in range(t):
                s[:, j] = neuron_step(u, v, a[:, j], layer, ev, low)
            if spikes is not None:
                spikes[k][start : start + b] = s
            x = s
        layer_events[-1]["readout_spikes"] += int(x.sum())
        v_out[start : start + b] = v.reshape(b, -1)
    for ev in layer_events:
        for key, val in ev.items():
            events[key] += val
    return SimResult(v_out=v_out, spikes=spikes, events=events, layer_events=layer_events)


def stream(net: SimNet, frames: np.ndarray, time_steps: int, reset_offset: int | None = None, extra_steps: int | None = None) -> dict[str, Any]:
    """The literal Lava timeline for samples fed back to back (slow; for checks on small nets).

    frames: int ``[N, T, *input_shape]``; the source sends frame j of sample s at step
    s·T + j + 1 and zeros after the last sample. A synapse sends what it computed in the
    previous step; an input neuron integrates the source in the step it sends. Layer k
    (1-based) resets at steps ≡ reset_offset + k (mod time_steps), as ``Network(reset_interval
    =time_steps, reset_offset=reset_offset)`` does; the default, ``net.input_delay``, resets
    each layer in the step frame 0 of a sample reaches it. Runs N·T + L − 1 + input_delay
    (+ extra_steps) steps (L layers).

    Returns ``{"spikes": [bool [steps, *out_shape] per layer] (index t−1 = step t, what a
    sink RingBuffer records), "v_out": int64 [N, n_out] (read-out voltage after step
    (s+1)·T + L − 1 + input_delay), "steps": int}``.
    """
    frames = _check_frames(net, frames)
    n, t = frames.shape[:2]
    n_layers = len(net.layers)
    lag = n_layers - 1 + net.input_delay  # steps from a frame's sending to its read-out
    offset = net.input_delay if reset_offset is None else reset_offset
    steps = n * t + lag + (extra_steps or 0)
    seq = frames.reshape(n * t, *frames.shape[2:])
    zero_in = np.zeros(frames.shape[2:], dtype=np.int64)
    a_buf = [np.zeros(layer.out_shape, dtype=np.int64) for layer in net.layers]
    u = [np.zeros(layer.out_shape, dtype=np.int64) for layer in net.layers]
    v = [np.zeros(layer.out_shape, dtype=np.int64) for layer in net.layers]
    rec = [np.zeros((steps, *layer.out_shape), dtype=bool) for layer in net.layers]
    v_out = np.zeros((n, int(np.prod(net.layers[-1].out_shape))), dtype=np.int64)
    for step in range(1, steps + 1):
        src = seq[step - 1] if step - 1 < n * t else zero_in
        outs = []
        for k, layer in enumerate(net.layers, start=1):
            if step % time_steps == (offset + k) % time_steps:
                u[k - 1][...] = 0
                v[k - 1][...] = 0
            a = synapse(layer, src[None])[0] if layer.kind == "input" else a_buf[k - 1]
            outs.append(neuron_step(u[k - 1], v[k - 1], a, layer))
            rec[k - 1][step - 1] = outs[-1]
        for k, layer in enumerate(net.layers, start=1):
            if layer.kind != "input":
                inp = src if k == 1 else outs[k - 2].astype(np.int64)
                a_buf[k - 1] = synapse(layer, inp[None])[0]
        s_done = step - lag
        if s_done > 0 and s_done % t == 0 and s_done // t - 1 < n:
            v_out[s_done // t - 1] = v[-1].reshape(-1)
    return {"spikes": rec, "v_out": v_out, "steps": steps}


def frame_aligned(recording: np.ndarray, layer: int, n_samples: int, time_steps: int, input_delay: int = 1) -> np.ndarray:
    """Lava sink recording ``[steps, *shape]`` of layer ``layer`` (0-based) → ``[N, T, *shape]``.

    input_delay: the network's :attr:`SimNet.input_delay` (frame 0 reaches layer ``layer`` in
    step layer + 1 + input_delay, recorded at index layer + input_delay).
    """
    start = layer + input_delay
    block = recording[start : start + n_samples * time_steps]
    return block.reshape(n_samples, time_steps, *recording.shape[1:])


# --------------------------------------------------------------------------- float vs integer


@dataclass
class _Tally:
    """What :func:`compare` sums over the batches: per batch the float logits ``[B, classes]``,
    the integer logits (v_out / output_scale), both predictions and the labels ``[B]``; the
    saturation events (total and per layer) and, when the spikes are compared, the mismatching
    spikes per hidden layer (``mismatch``, else None) out of ``compared`` spikes."""

    by_layer: list[dict[str, int]]
    mismatch: list[int] | None
    events: dict[str, int] = field(default_factory=dict)
    compared: int = 0
    logits_f: list[np.ndarray] = field(default_factory=list)
    logits_q: list[np.ndarray] = field(default_factory=list)
    preds_f: list[np.ndarray] = field(default_factory=list)
    preds_q: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, lf: np.ndarray, res: SimResult, y: Any, out_scale: float, recorded: list[Any]) -> None:
        """One batch: float logits ``lf`` [B, classes], the simulator's result on it, labels
        ``y`` [B] and the model's recorded IF outputs (``[T, B, ...]`` tensors, one per layer)."""
        if self.mismatch is not None and res.spikes is not None:
            for k, (mine, theirs) in enumerate(zip(res.spikes, recorded)):
                torch_spikes = theirs.cpu().numpy().swapaxes(0, 1).reshape(mine.shape) >= 0.5
                self.mismatch[k] += int((torch_spikes != mine).sum())
                self.compared += int(mine.size)
        for k, val in res.events.items():
            self.events[k] = self.events.get(k, 0) + val
        for mine, theirs in zip(self.by_layer, res.layer_events):
            for k, val in theirs.items():
                mine[k] = mine.get(k, 0) + val
        self.logits_f.append(lf)
        self.logits_q.append(res.v_out / out_scale)
        self.preds_f.append(lf.argmax(1))
        self.preds_q.append(res.v_out.argmax(1))
        self.labels.append(np.asarray(y))

    def summary(self) -> dict[str, Any]:
        """The result of :func:`compare` (see there) over the batches added."""
        lf, lq = np.concatenate(self.logits_f), np.concatenate(self.logits_q)
        pf, pq, yy = np.concatenate(self.preds_f), np.concatenate(self.preds_q), np.concatenate(self.labels)
        err = np.abs(lf - lq)
        spread = float(lf.std()) or 1.0
        readout = self.by_layer[-1]
        departures = sum(self.events.get(k, 0) for k in ("current_wrap", "conv_wrap", "int32_overflow", "spike_after_clip"))
        departures += readout.get("voltage_clip", 0) + readout.get("readout_spikes", 0)
        return {
            "n": int(len(yy)),
            "agreement": float((pf == pq).mean()),
            "accuracy_float": float((pf == yy).mean()),
            "accuracy_int": float((pq == yy).mean()),
            "logit_max_abs_error": float(err.max()),
            "logit_mean_abs_error": float(err.mean()),
            "logit_rel_error": float(err.mean() / spread),
            "events": self.events,
            "layer_events": [{k: v for k, v in ev.items() if v} for ev in self.by_layer],
            "departures": int(departures),
            "spike_mismatch": self.mismatch,
            "spikes_compared": self.compared,
        }


def _first_samples(loader: Any, max_samples: int | None) -> Iterator[tuple[Any, Any]]:
    """The ``(x [T, B, ...], y [B])`` batches of ``loader``, cut to ``max_samples`` samples in all
    (all of them when None)."""
    seen = 0
    for x, y in loader:
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            x, y = x[:, : max_samples - seen], y[: max_samples - seen]
        yield x, y
        seen += len(y)


@contextmanager
def _evaluating(model: Any, neurons: list[Any], record: bool) -> Iterator[list[Any]]:
    """``model`` in eval mode for the block; with ``record``, every forward of each of
    ``neurons`` appends its detached output to the list yielded (the caller clears it).
    The training flag is restored and the hooks removed on the way out."""
    recorded: list[Any] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: recorded.append(o.detach())) for m in neurons] if record else []
    was_training = model.training
    model.eval()
    try:
        yield recorded
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def compare(model: Any, netfile: str | os.PathLike[str], loader: Any, max_samples: int | None = None) -> dict[str, Any]:
    """PyTorch model vs the integer network on a loader of ``(x [T, B, C, H, W], y [B])``.

    The integer network gets counts = round(x · input_scale). Returns n, prediction
    agreement, both accuracies, logit errors (integer logits = v_out / output_scale,
    compared with the model's mean logits: max and mean absolute error, and the mean
    error relative to the spread of the float logits), the saturation events (total and
    per layer) and ``departures``: the events that can make the integer network depart
    from the float one (wrapped currents, spikes after a negative clip, a clipped or firing
    read-out). A hidden neuron clipped at the negative limit that does not fire again
    before the sample ends behaves as the float neuron, which has no lower bound. For a
    model whose IF layers map one to one onto the hidden layers (a SpikingVGG),
    ``spike_mismatch`` counts per hidden layer the spikes where PyTorch and the integer
    network differ, out of ``spikes_compared`` (None otherwise).
    """
    import torch

    from dvsguard.snn.neuron import IFNeuron

    net = load_netx(netfile)
    scale = float(net.attrs.get("input_scale", 1.0))
    out_scale = net.output_scale
    if out_scale is None:
        raise ExportError(f"{netfile}: no output_scale attribute (not written by dvsguard export)")
    neurons = [m for m in model.modules() if isinstance(m, IFNeuron)]
    check_spikes = len(neurons) == len(net.layers) - 1
    tally = _Tally([{} for _ in net.layers], [0] * len(neurons) if check_spikes else None)
    with _evaluating(model, neurons, check_spikes) as recorded:
        for x, y in _first_samples(loader, max_samples):
            recorded.clear()
            with torch.no_grad():
                lf = model(x).double().cpu().numpy()
            counts = np.rint(x.double().cpu().numpy() * scale).astype(np.int64).swapaxes(0, 1)
            if net.time_steps is not None and counts.shape[1] != net.time_steps:
                raise ExportError(f"{netfile}: exported for T={net.time_steps}, the data has T={counts.shape[1]}")
            tally.add(lf, simulate(net, counts, record=check_spikes), y, out_scale, recorded)
    if not tally.labels:
        raise ExportError("compare: the loader gave no samples")
    return tally.summary()
