"""Write a :class:`~dvsguard.export.quantize.QuantizedNet` as a lava-dl netx HDF5 file, plus
its JSON manifest and a Loihi 2 resource table.

netx schema (lava-dl 0.6.0 ``netx/hdf5.py``, ``netx/utils.py``): the group ``layer`` holds
subgroups ``"0"``, ``"1"``, … read in order, each with a ``type`` (fixed-length bytes):

* ``input``: ``shape`` = (C, H, W). Without a ``neuron`` group netx makes no block and only
  takes the input shape from it; the frames then enter the first conv's synapse directly
  as graded events (``Network(..., input_message_bits=…)``).
* ``conv``: ``weight`` [out, in, kH, kW] (PyTorch order: netx flips and transposes it for
  Lava's XYZ layout), ``bias`` [out], ``shape`` = output (C, H, W), ``stride``,
  ``padding``, ``dilation`` as (y, x), ``groups``, and a ``neuron`` group.
* ``flatten``: the next dense layer reads the previous (C, H, W) map flattened in C, H, W
  order (netx transposes Lava's (W, H, C) ports back).
* ``dense``: ``weight`` [out, in], ``bias`` [out], ``shape`` = (out,), ``neuron``.
* ``neuron``: ``type`` = ``CUBA``, ``iDecay``, ``vDecay``, ``vThMant``, ``refDelay``,
  ``gradedSpike`` (netx reads the first four; Lava's CUBA neuron has no refractory period).

``shape`` is written (C, H, W) and netx reverses it to Lava's (W, H, C); this module is
the only place that knows about that order. Weights and biases are read with
``.astype(int)``, so they are stored as exact integers.

Root attributes (ignored by netx) carry what a runner needs: ``input_bits``,
``time_steps``, ``reset_interval``, ``reset_offset``, ``lag``, ``output_scale``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dvsguard.atomic import atomic_path, write_text
from dvsguard.errors import ExportError
from dvsguard.export.quantize import QLayer, QuantizedNet
from dvsguard.export.resources import CORES_PER_CHIP, NEURON_LIMIT, SYNMEM_WORDS, LayerSpec, estimate, weight_bits

log = logging.getLogger(__name__)

FORMAT = "dvsguard-netx/1"
MANIFEST_FORMAT = "dvsguard-export/1"
I_DECAY_IF = 4096  # current decays fully every step: u is this step's input only
V_DECAY_IF = 0  # no leak: integrate-and-fire

# Loihi 2 per-chip capacities (Intel Labs, "Taking Neuromorphic Computing to the Next Level
# with Loihi 2", technology brief, 2021): 128 neuro-cores, up to 1 M neurons and 120 M
# synapses per chip. Cores per layer come from :mod:`dvsguard.export.resources`.
NEURONS_PER_CHIP = 1_048_576
SYNAPSES_PER_CHIP = 120_000_000
CALIBRATION = "model of Lava's compiler; 74 of 74 cores, every layer exact, on lava-dl's PilotNet SNN"


# --------------------------------------------------------------------------- writers


def _ds(group: h5py.Group, name: str, data: Any) -> None:
    """A dataset without time stamps, so the same network always gives the same bytes."""
    group.create_dataset(name, data=data, track_times=False)


def _type(group: h5py.Group, name: str) -> None:
    _ds(group, "type", np.array([name.encode("ascii")], dtype=f"S{len(name)}"))


def _neuron(group: h5py.Group, layer: QLayer) -> None:
    n = group.create_group("neuron")
    _type(n, "CUBA")
    _ds(n, "iDecay", np.int64(I_DECAY_IF))
    _ds(n, "vDecay", np.int64(V_DECAY_IF))
    _ds(n, "vThMant", np.int64(layer.vth))
    _ds(n, "refDelay", np.int64(1))
    _ds(n, "gradedSpike", np.bool_(False))


def _synapse(group: h5py.Group, kind: str, layer: QLayer) -> None:
    """The datasets ``conv`` and ``dense`` layers start with, in this order: ``type`` = ``kind``,
    ``shape`` = output (C, H, W) or (out,), int16 ``weight`` ([out, in, kH, kW] or [out, in])
    and int16 ``bias`` [out]."""
    _type(group, kind)
    _ds(group, "shape", np.asarray(layer.out_shape, dtype=np.int64))
    _ds(group, "weight", layer.weight.astype(np.int16))
    _ds(group, "bias", layer.bias.astype(np.int16))


def write_input(group: h5py.Group, net: QuantizedNet, layer: QLayer | None) -> None:
    """``input`` layer: the frame shape (C, H, W) only."""
    _type(group, "input")
    _ds(group, "shape", np.asarray(net.input_shape, dtype=np.int64))


def write_flatten(group: h5py.Group, net: QuantizedNet, layer: QLayer | None) -> None:
    """``flatten`` marker before a dense layer that reads a (C, H, W) map."""
    _type(group, "flatten")
    if layer is not None:
        _ds(group, "shape", np.asarray(layer.in_shape, dtype=np.int64))


def write_conv(group: h5py.Group, net: QuantizedNet, layer: QLayer | None) -> None:
    """``conv`` layer with a CUBA neuron."""
    assert layer is not None
    _synapse(group, "conv", layer)
    _ds(group, "stride", np.asarray(layer.stride, dtype=np.int64))
    _ds(group, "padding", np.asarray(layer.padding, dtype=np.int64))
    _ds(group, "dilation", np.asarray((1, 1), dtype=np.int64))
    _ds(group, "groups", np.int64(1))
    _neuron(group, layer)


def write_dense(group: h5py.Group, net: QuantizedNet, layer: QLayer | None) -> None:
    """``dense`` layer with a CUBA neuron."""
    assert layer is not None
    _synapse(group, "dense", layer)
    _neuron(group, layer)


Writer = Callable[[h5py.Group, QuantizedNet, "QLayer | None"], None]

#: netx layer type → writer (read back by :data:`dvsguard.export.intsim.READERS`).
WRITERS: dict[str, Writer] = {
    "input": write_input,
    "flatten": write_flatten,
    "conv": write_conv,
    "dense": write_dense,
}


def netx_entries(net: QuantizedNet) -> list[tuple[str, QLayer | None]]:
    """The netx layer list: (type, layer) with the input and flatten markers inserted."""
    entries: list[tuple[str, QLayer | None]] = [("input", None)]
    for layer in net.layers:
        if layer.kind not in WRITERS:
            raise ExportError(f"{layer.name}: no netx writer for layer kind {layer.kind!r}")
        if layer.flatten:
            entries.append(("flatten", layer))
        entries.append((layer.kind, layer))
    return entries


def write_netx(net: QuantizedNet, path: str | os.PathLike[str]) -> Path:
    """Write ``net`` to ``path`` in the netx HDF5 schema (atomic). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["input_bits"] = net.input_bits
            f.attrs["input_scale"] = net.input_scale
            f.attrs["time_steps"] = net.time_steps
            f.attrs["reset_interval"] = net.time_steps
            f.attrs["reset_offset"] = 1
            f.attrs["lag"] = net.lag
            f.attrs["output_scale"] = net.output_scale
            root = f.create_group("layer", track_order=True)
            for i, (kind, layer) in enumerate(netx_entries(net)):
                WRITERS[kind](root.create_group(str(i)), net, layer)
    return path


# --------------------------------------------------------------------------- resources


def _conv_synapses(layer: QLayer) -> int:
    """Connections of a conv layer that land inside the input (padding taps excluded)."""
    c_in, h, w = layer.in_shape
    c_out, ho, wo = layer.out_shape
    kh, kw = layer.weight.shape[2:]

    def valid(n_out: int, n_in: int, k: int, s: int, p: int) -> int:
        r = np.arange(n_out)[:, None] * s + np.arange(k)[None, :] - p
        return int(((r >= 0) & (r < n_in)).sum())

    return c_out * c_in * valid(ho, h, kh, layer.stride[0], layer.padding[0]) * valid(wo, w, kw, layer.stride[1], layer.padding[1])


def resource_table(net: QuantizedNet) -> dict[str, Any]:
    """Per-layer Loihi 2 resources and whether the network fits one chip.

    Rows: name, kind, neurons, synapses (connections), fan_in, weight_bytes (8-bit
    weights stored; conv kernels are shared, dense matrices are not), cores (estimated by
    :func:`dvsguard.export.resources.estimate`, with neurons and synapse words per core).
    Totals, ``chips`` and ``fits_chip``.
    """
    specs = [LayerSpec(layer.name, layer.kind, tuple(layer.out_shape) if layer.kind == "conv" else (layer.neurons, 1, 1),
                       in_channels=int(layer.weight.shape[1]), taps=int(np.prod(layer.weight.shape[2:])),
                       weight_bits=weight_bits(layer.weight)) for layer in net.layers]
    est = estimate(specs)
    rows = []
    for layer, mapped in zip(net.layers, est["rows"]):
        synapses = _conv_synapses(layer) if layer.kind == "conv" else int(layer.weight.size)
        weight_bytes = int(layer.weight.size)
        cores = mapped["cores"]
        rows.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "neurons": layer.neurons,
                "synapses": synapses,
                "fan_in": layer.fan_in,
                "weight_bytes": weight_bytes,
                "cores": cores,
                "neurons_per_core": mapped["neurons_per_core"],
                "words_per_core": mapped["words_per_core"],
            }
        )
    totals = {key: sum(r[key] for r in rows) for key in ("neurons", "synapses", "weight_bytes", "cores")}
    stored_synapses = sum(r["weight_bytes"] for r in rows)
    problems = list(est["problems"])
    if totals["cores"] > CORES_PER_CHIP:
        problems.append(f"needs about {totals['cores']} neuro-cores ({est['chips']} Loihi 2 chips of {CORES_PER_CHIP})")
    if totals["neurons"] > NEURONS_PER_CHIP:
        problems.append(f"has {totals['neurons']} neurons, a chip holds {NEURONS_PER_CHIP}")
    if stored_synapses > SYNAPSES_PER_CHIP:
        problems.append(f"stores {stored_synapses} synaptic weights, a chip holds {SYNAPSES_PER_CHIP}")
    return {
        "rows": rows,
        "totals": totals,
        "chips": est["chips"],
        "estimate": CALIBRATION,
        "limits": {
            "cores_per_chip": CORES_PER_CHIP,
            "neurons_per_core": NEURON_LIMIT,
            "synmem_words_per_core": SYNMEM_WORDS,
            "neurons_per_chip": NEURONS_PER_CHIP,
            "synapses_per_chip": SYNAPSES_PER_CHIP,
        },
        "fits_chip": not problems,
        "problems": problems,
    }


def format_resource_table(table: dict[str, Any]) -> str:
    """The resource table as aligned text lines."""
    head = f"{'layer':<16} {'kind':<6} {'neurons':>9} {'synapses':>12} {'fan-in':>7} {'weights(B)':>11} {'cores':>6}"
    lines = [head, "-" * len(head)]
    for r in table["rows"]:
        lines.append(
            f"{r['name']:<16} {r['kind']:<6} {r['neurons']:>9} {r['synapses']:>12} {r['fan_in']:>7} "
            f"{r['weight_bytes']:>11} {r['cores']:>6}"
        )
    t = table["totals"]
    lines.append(f"{'total':<16} {'':<6} {t['neurons']:>9} {t['synapses']:>12} {'':>7} {t['weight_bytes']:>11} {t['cores']:>6}")
    lim = table["limits"]
    verdict = "fits one Loihi 2 chip" if table["fits_chip"] else "does NOT fit one Loihi 2 chip: " + "; ".join(table["problems"])
    lines.append(
        f"cores: estimate ({table['estimate']}); Loihi 2: {lim['cores_per_chip']} cores/chip, "
        f"< {lim['neurons_per_core']} neurons and {lim['synmem_words_per_core']} synapse words per core → {verdict}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- manifest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def layer_summary(layer: QLayer) -> dict[str, Any]:
    """JSON-ready description of one integer layer."""
    return {
        "name": layer.name,
        "kind": layer.kind,
        "sources": layer.sources,
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "stride": list(layer.stride),
        "padding": list(layer.padding),
        "pool_folded": layer.pool,
        "scale": layer.scale,
        "vThMant": layer.vth,
        "spiking": layer.spiking,
        "weight_range": [int(layer.weight.min()), int(layer.weight.max())],
        "bias_range": [int(layer.bias.min()), int(layer.bias.max())],
        "clipped": layer.clipped,
    }


def build_manifest(
    net: QuantizedNet,
    net_path: Path,
    *,
    source: dict[str, Any],
    framing: dict[str, Any] | None,
    classes: list[str] | None,
    resources: dict[str, Any],
    scales_from: str = "scale rule",
) -> dict[str, Any]:
    """The manifest that travels with a ``.net`` file (JSON-ready dict). scales_from: where
    the per-layer scales came from (``scale rule`` or ``fixed-point record``)."""
    return {
        "format": MANIFEST_FORMAT,
        "net": net_path.name,
        "net_sha256": sha256_file(net_path),
        "source": source,
        "framing": framing,
        "classes": classes,
        "input": {
            "shape_chw": list(net.input_shape),
            "scale": net.input_scale,
            "encoding": "graded events: frame counts = round(x · scale), fed to the first layer's synapses",
            "message_bits": net.input_bits,
        },
        "time_steps": net.time_steps,
        "lag": net.lag,
        "reset_interval": net.time_steps,
        "reset_offset": 1,
        "output": {
            "layer": len(net.layers) - 1,
            "read": "voltage v of the last layer after its T-th frame",
            "scale": net.output_scale,
            "logits": "mean logits ≈ v / scale",
        },
        "scales_from": scales_from,
        "layers": [layer_summary(layer) for layer in net.layers],
        "resources": resources,
        "warnings": net.warnings,
    }


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write JSON atomically (indent 2)."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
