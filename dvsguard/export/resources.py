"""Loihi 2 neuro-core estimate per layer, a model of how Lava's compiler partitions a netx network.

Calibrated on lava-dl's PilotNet SNN (``tutorials/lava/lib/dl/netx/pilotnet_snn``), whose
compiler output lists per layer the neurons and synapse words per core and the cores used.
What that output shows, and this model assumes:

* conv layers (and an input layer with a neuron, the on-chip encoder) are tiled along W of
  Lava's (W, H, C) layout, each core holding a power-of-two number of columns w with the full
  H and C; w is halved from the next power of two ≥ W while w·H·C ≥ :data:`NEURON_LIMIT`
  (the compiler placed 2048–3168 neurons per core and refused every tile of 4096 or more;
  Intel's 8192 neurons per core is the hardware ceiling, not the compiler's);
* synaptic memory is counted in words and a core holds :data:`SYNMEM_WORDS` (the compiler's
  message ``SynMem allocation 61440 > 12000``); a dense layer costs ⌈n/4⌉ words per input
  axon for n neurons on the core (16 bits per synapse: 24–25 words for all 100 neurons of
  PilotNet's 2560-input layer, 61440 in the message); a conv layer costs, per input channel
  and kernel tap, one word plus the core's output channels packed at their bit width into
  64-bit words (exact for 4 of PilotNet's 5 convs, one word low for the 48-channel one);
* when a core overflows, the compiler multiplies its core count by ⌈allocation / limit⌉
  (doubling when the overshoot is smaller) until every core fits: dense layers split their
  neurons, conv layers their output channels.

Not public, hence not modelled: Loihi 2's per-core input-axon (AxonIn) and output-axon
(AxonMap/AxonMem) limits (PilotNet's largest, 2560 and 1280, did not bind), and how the
compiler maps a dense layer whose fan-in overflows synaptic memory at one neuron per core
(counted here as one core per neuron, and reported as a problem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CORES_PER_CHIP = 128
NEURON_LIMIT = 4096
SYNMEM_WORDS = 12000
DENSE_SYNAPSES_PER_WORD = 4
WORD_BITS = 64


@dataclass(frozen=True)
class LayerSpec:
    """What the estimate needs of one layer: kind ``input``/``conv``/``dense``, output shape
    (C, H, W) (dense: (N, 1, 1)), input channels (dense: fan-in), kernel taps kH·kW, weight
    bits, and for an input layer whether it has a neuron (is an encoder on chip)."""

    name: str
    kind: str
    out_shape: tuple[int, int, int]
    in_channels: int = 0
    taps: int = 1
    weight_bits: int = 8
    on_chip: bool = True


def weight_bits(weight: np.ndarray) -> int:
    """Signed bits of integer weights once their common power-of-two factor is shifted out."""
    w = np.abs(np.asarray(weight, dtype=np.int64))
    nz = w[w > 0]
    if nz.size == 0:
        return 1
    shift = int(np.min([(int(v) & -int(v)).bit_length() - 1 for v in np.unique(nz)]))
    return int(int(nz.max() >> shift).bit_length() + 1)


def _tile_columns(width: int, column_neurons: int) -> int:
    w = 1 << max(0, (width - 1).bit_length())
    while w > 1 and w * column_neurons >= NEURON_LIMIT:
        w //= 2
    return w


def map_layer(spec: LayerSpec) -> dict[str, Any]:
    """Cores, neurons per core, synapse words per core and any problem of one layer."""
    c, h, w = spec.out_shape
    if spec.kind == "input" and not spec.on_chip:
        return {"cores": 0, "neurons_per_core": 0, "words_per_core": 0, "problem": None}
    groups, problem = 1, None
    while True:
        per = math.ceil(c / groups)
        if spec.kind == "dense":
            words = spec.in_channels * math.ceil(per / DENSE_SYNAPSES_PER_WORD)
        elif spec.kind == "conv":
            words = spec.in_channels * spec.taps * (1 + math.ceil(per * spec.weight_bits / WORD_BITS))
        else:
            words = 0
        cols = _tile_columns(w, h * per)
        if per > 1 and (words > SYNMEM_WORDS or cols * h * per >= NEURON_LIMIT):
            groups *= max(2, math.ceil(words / SYNMEM_WORDS)) if words > SYNMEM_WORDS else 2
            continue
        if words > SYNMEM_WORDS:
            problem = (f"{spec.name}: {words} synapse words with one output (neuron or channel) per core, a core holds {SYNMEM_WORDS} "
                       "(how the compiler maps it is not public; counted as one core per output)")
        break
    cores = math.ceil(c / per) * math.ceil(w / cols)
    return {"cores": cores, "neurons_per_core": min(cols, w) * h * per, "words_per_core": words, "problem": problem}


def estimate(specs: list[LayerSpec]) -> dict[str, Any]:
    """Per-layer rows (name, kind, cores, neurons_per_core, words_per_core), total cores, chips."""
    rows = [{"name": s.name, "kind": s.kind, **map_layer(s)} for s in specs]
    total = sum(r["cores"] for r in rows)
    return {"rows": rows, "cores": total, "chips": max(1, math.ceil(total / CORES_PER_CHIP)),
            "problems": [r["problem"] for r in rows if r["problem"]]}


def specs_from_netx(path: str | Path) -> list[LayerSpec]:
    """The layers of a netx HDF5 file (shapes stored (C, H, W); ``flatten`` skipped)."""
    import h5py

    specs = []
    with h5py.File(path, "r") as f:
        for i in range(len(f["layer"])):
            g = f["layer"][str(i)]
            kind = g["type"][0].decode()
            shape = tuple(int(v) for v in np.atleast_1d(g["shape"][()]))
            if kind == "dense":
                shape = (int(np.prod(shape)), 1, 1)
            if kind == "input":
                specs.append(LayerSpec(f"{i}", "input", shape, on_chip="neuron" in g))
            elif kind in ("conv", "dense"):
                wt = np.asarray(g["weight"][()]).astype(np.int64)
                wt = wt.reshape(shape[0], -1) if kind == "dense" else wt
                specs.append(LayerSpec(f"{i}", kind, shape, in_channels=int(wt.shape[1]),
                                       taps=int(np.prod(wt.shape[2:])) if kind == "conv" else 1,
                                       weight_bits=weight_bits(wt)))
    return specs
