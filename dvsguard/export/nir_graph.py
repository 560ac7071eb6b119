"""NIR export: the trained float network as a NIR graph (the ``nir`` package, neuroir.org).

NIR is the field's exchange format between simulators and chips (Lava, SpiNNaker2, Speck/Sinabs,
Norse, snnTorch, Rockpool, Spyx). The graph holds the float network per time step, with
BatchNorm folded into its Conv2d/Linear (:func:`dvsguard.export.quantize.extract_layers`, the
fold netx uses), no quantization:

    input (C, H, W) → [SumPool2d k] → Conv2d | [Flatten] → Affine → IF → … → Affine → output

* ``IF``: r = 1, v_threshold = θ, v_reset = 0 (hard reset). NIR's IF fires when v > θ;
  dvsguard's (SpikingJelly's) when v ≥ θ — the two differ only on exact ties.
* Average pooling is written as ``SumPool2d`` (stride k, no padding) with 1/k² folded into the
  next layer's weights: Norse, Sinabs and Speck read SumPool2d, not all readers take AvgPool2d.
* ``Flatten``: start_dim 0, end_dim −1 over the unbatched (C, H, W) shape, as NIR's own shape
  rule computes it; readers that apply it to batched tensors must be fed one sample at a time.
* The last ``Affine`` has no neuron: its output per time step is the read-out current; the
  logits are its mean over the T frames, as in :class:`dvsguard.snn.vgg.SpikingVGG`.

Inputs are frames in model units (counts / count cap), one per time step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dvsguard.atomic import atomic_path
from dvsguard.errors import ExportError
from dvsguard.export.quantize import FloatLayer, extract_layers

NIR_SUFFIX = ".nir"


def _nir() -> Any:
    try:
        import nir
    except ImportError:
        raise ExportError("NIR export needs the nir package (pip install nir)") from None
    return nir


def layer_nodes(layer: FloatLayer) -> list[tuple[str, Any]]:
    """NIR nodes for one folded float layer, in order: (key, node)."""
    nir = _nir()
    nodes: list[tuple[str, Any]] = []
    weight = np.asarray(layer.weight, dtype=np.float64)
    k = layer.pool
    if k > 1:
        nodes.append((f"{layer.name}.pool", nir.SumPool2d(
            kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0]))))
        weight = weight / (k * k)
    bias = np.asarray(layer.bias, dtype=np.float32)
    if layer.kind == "conv":
        nodes.append((layer.name, nir.Conv2d(
            input_shape=tuple(int(v) for v in layer.in_shape[1:]), weight=weight.astype(np.float32),
            stride=tuple(layer.stride), padding=tuple(layer.padding), dilation=(1, 1), groups=1, bias=bias)))
    else:
        if layer.flatten:
            c, h, w = layer.pre_pool_shape
            nodes.append((f"{layer.name}.flatten", nir.Flatten(
                input_type={"input": np.array([c, h // k, w // k])}, start_dim=0, end_dim=-1)))
        nodes.append((layer.name, nir.Affine(weight=weight.astype(np.float32), bias=bias)))
    if layer.theta is not None:
        shape = layer.out_shape
        nodes.append((f"{layer.name}.if", nir.IF(
            r=np.ones(shape, dtype=np.float32), v_threshold=np.full(shape, layer.theta, dtype=np.float32),
            v_reset=np.zeros(shape, dtype=np.float32))))
    return nodes


def to_nir(model: nn.Module, input_shape: tuple[int, int, int]) -> Any:
    """The NIR graph (``nir.NIRGraph``) of ``model`` for frames of ``input_shape`` (C, H, W).

    Raises ExportError for a module NIR export cannot map (the same rules as netx export).
    """
    nir = _nir()
    with torch.no_grad():
        layers = extract_layers(model, input_shape)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for layer in layers:
        for key, node in layer_nodes(layer):
            nodes[key] = node
            edges.append((prev, key))
            prev = key
    nodes["output"] = nir.Output(output_type={"output": np.array(layers[-1].out_shape)})
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges)


def write_nir(model: nn.Module, input_shape: tuple[int, int, int], path: str | os.PathLike[str]) -> Path:
    """Write :func:`to_nir` of ``model`` to ``path`` atomically; read it back with ``nir.read``
    (ExportError when the file does not read back to the same nodes and edges)."""
    nir = _nir()
    graph = to_nir(model, input_shape)
    path = Path(path)
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
        back = nir.read(tmp)
        if set(back.nodes) != set(graph.nodes) or sorted(back.edges) != sorted(graph.edges):
            raise ExportError(f"{path}: the NIR file written does not read back to the graph (nir {nir.__version__})")
    return path


def primitives(graph: Any) -> list[str]:
    """The NIR node types a graph uses, sorted (e.g. ``["Affine", "Conv2d", "IF", …]``)."""
    return sorted({type(node).__name__ for node in graph.nodes.values()})
