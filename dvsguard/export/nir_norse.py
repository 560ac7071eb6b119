"""Run a NIR file in Norse (an independent simulator, ``norse.torch.from_nir``) and compare it with
the PyTorch model it came from.

Norse maps NIR's IF to its ``IAFCell`` (v ← v + input; spike when v > θ; v ← v_reset after a
spike), SumPool2d to ``LPPool2d(1)``, Conv2d/Affine/Flatten to torch's layers. Its Flatten takes
NIR's start_dim literally on the tensor it gets, so samples are fed unbatched, ``[C, H, W]`` per
time step, which is NIR's own (batch-free) shape convention.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from dvsguard.errors import ExportError


def _norse() -> Any:
    try:
        from norse.torch.module.iaf import IAFCell
        from norse.torch.utils.import_nir import from_nir
    except ImportError:
        raise ExportError("running a NIR file in Norse needs norse and nirtorch "
                          "(pip install --no-deps norse nirtorch)") from None
    return from_nir, IAFCell


def chain(graph: Any) -> list[str]:
    """The node keys of a chain-shaped NIR graph from ``input`` to ``output`` (ExportError if it branches)."""
    nxt: dict[str, str] = {}
    for a, b in graph.edges:
        if a in nxt:
            raise ExportError(f"NIR graph branches at {a!r}; only chains are run")
        nxt[a] = b
    keys, key = [], "input"
    while key in nxt and len(keys) <= len(graph.nodes):
        keys.append(key)
        key = nxt[key]
    return keys + [key]


def run_norse(path: str | os.PathLike[str], frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """frames ``[T, B, C, H, W]`` (model units) → (logits ``[B, n]`` = mean read-out over T,
    spikes of every IF node in graph order, each bool ``[T, B, ...]``)."""
    import nir

    from_nir, iaf_cell = _norse()
    graph = nir.read(os.fspath(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load, which Norse 1.1 calls
        net = from_nir(graph, ignore_warnings=True)
    modules = dict(net.named_modules())
    if_keys = [k for k in chain(graph) if isinstance(graph.nodes[k], nir.IF)]
    cells = [modules[k.replace(".", "_")] for k in if_keys]
    if not all(isinstance(c, iaf_cell) for c in cells):
        raise ExportError(f"{path}: Norse did not map every IF node to an IAFCell")
    recorded: list[list[torch.Tensor]] = [[] for _ in cells]
    hooks = [cell.register_forward_hook(lambda _m, _i, out, k=k: recorded[k].append(out[0].detach()))
             for k, cell in enumerate(cells)]
    t_steps, batch = frames.shape[:2]
    logits, spikes = [], []
    try:
        with torch.no_grad():
            for b in range(batch):
                for r in recorded:
                    r.clear()
                state = None
                out = []
                for t in range(t_steps):
                    y, state = net(frames[t, b].float(), state)
                    out.append(y)
                logits.append(torch.stack(out).mean(0))
                spikes.append([torch.stack(r) > 0 for r in recorded])
    finally:
        for h in hooks:
            h.remove()
    per_layer = [torch.stack([s[k] for s in spikes], dim=1) for k in range(len(cells))]
    return torch.stack(logits), per_layer


def model_spikes(model: nn.Module, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The PyTorch model's logits ``[B, n]`` and the spikes of its IF layers, bool ``[T, B, ...]``."""
    from dvsguard.snn.neuron import IFNeuron

    recorded: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: recorded.append(out.detach() > 0))
             for m in model.modules() if isinstance(m, IFNeuron)]
    try:
        with torch.no_grad():
            logits = model(frames)
    finally:
        for h in hooks:
            h.remove()
    return logits, recorded


def compare_nir(model: nn.Module, path: str | os.PathLike[str], frames: torch.Tensor,
                labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Norse on the NIR file against ``model`` on the same frames ``[T, B, C, H, W]``.

    Returns n, agreement (fraction of equal predictions), max |logit difference|, and per IF
    layer the spikes compared and the number that differ; with labels, both accuracies.
    """
    was_training = model.training
    model.eval()
    try:
        ref_logits, ref_spikes = model_spikes(model, frames)
    finally:
        model.train(was_training)
    logits, spikes = run_norse(path, frames)
    if len(spikes) != len(ref_spikes):
        raise ExportError(f"{path}: Norse runs {len(spikes)} IF layers, the model has {len(ref_spikes)}")
    pred, ref_pred = logits.argmax(1), ref_logits.argmax(1)
    out: dict[str, Any] = {
        "n": int(frames.shape[1]),
        "agreement": float((pred == ref_pred).float().mean()),
        "logit_max_abs_diff": float((logits - ref_logits).abs().max()),
        "spikes_compared": [int(s.numel()) for s in ref_spikes],
        "spike_mismatch": [int((a != b.reshape(a.shape)).sum()) for a, b in zip(ref_spikes, spikes)],
    }
    if labels is not None:
        out["accuracy_norse"] = float((pred == labels).float().mean())
        out["accuracy_torch"] = float((ref_pred == labels).float().mean())
    return out

