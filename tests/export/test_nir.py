"""NIR export: the graph's nodes and parameters, nir's own reader, Norse reproducing PyTorch, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

from dvsguard.errors import ExportError
from dvsguard.export.nir_graph import primitives, to_nir, write_nir
from dvsguard.export.quantize import extract_layers
from dvsguard.snn.neuron import IFNeuron

from .conftest import make_test_cache, random_counts, save_model_checkpoint, tiny_model, to_model_input

norse = pytest.importorskip("norse", reason="Norse runs the NIR graphs (make install puts it in the venv)")
from dvsguard.export.nir_norse import compare_nir, model_spikes, run_norse  # noqa: E402


def test_graph_mirrors_the_folded_layers(tiny, tmp_path: Path) -> None:
    shape = (2, 16, 16)
    layers = extract_layers(tiny, shape)
    path = write_nir(tiny, shape, tmp_path / "tiny.nir")
    graph = nir.read(str(path))
    assert primitives(graph) == ["Affine", "Conv2d", "Flatten", "IF", "Input", "Output", "SumPool2d"]
    for layer in layers:
        node = graph.nodes[layer.name]
        k2 = layer.pool * layer.pool
        np.testing.assert_allclose(node.weight, layer.weight / k2, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(node.bias, layer.bias, rtol=1e-6, atol=1e-7)
        if layer.pool > 1:
            pool = graph.nodes[f"{layer.name}.pool"]
            assert list(pool.kernel_size) == list(pool.stride) == [layer.pool] * 2
        if layer.theta is not None:
            neuron = graph.nodes[f"{layer.name}.if"]
            assert neuron.v_threshold.shape == tuple(layer.out_shape)
            assert np.all(neuron.v_threshold == layer.theta) and np.all(neuron.v_reset == 0) and np.all(neuron.r == 1)
        else:
            assert (layer.name, "output") in graph.edges
    assert graph.nodes["classifier.1.flatten"].output_type["output"].tolist() == [layers[-2].in_shape[0]]


def test_norse_reproduces_pytorch_on_a_test_cache(tiny, tmp_path: Path) -> None:
    from dvsguard.export.exporter import load_samples

    cache = make_test_cache(tmp_path / "rec", n=12)
    _, x, labels = load_samples(cache, 12)
    path = write_nir(tiny, (2, 16, 16), tmp_path / "tiny.nir")
    result = compare_nir(tiny, path, torch.from_numpy(x), torch.from_numpy(labels))
    assert result["n"] == 12 and result["agreement"] == 1.0
    assert result["accuracy_norse"] == result["accuracy_torch"]
    assert result["logit_max_abs_diff"] < 1e-4
    total = sum(result["spikes_compared"])
    # BatchNorm is folded in the graph and not in PyTorch: float rounding may flip a spike whose
    # membrane lands within rounding of θ, nothing more
    assert sum(result["spike_mismatch"]) <= 1e-3 * total
    _, ref = model_spikes(tiny, torch.from_numpy(x))
    assert all(bool(s.any()) for s in ref), "every IF layer fires, so the spike comparison means something"


def test_exact_tie_is_where_the_conventions_differ(tmp_path: Path) -> None:
    """dvsguard's IF fires at v ≥ θ (SpikingJelly's), NIR's (and Norse's) at v > θ."""
    lin = nn.Linear(1, 1)
    with torch.no_grad():
        lin.weight.fill_(0.5)
        lin.bias.zero_()
    out = nn.Linear(1, 1)
    model = nn.Sequential(nn.Flatten(), lin, IFNeuron(), out).eval()
    # one input unit per step: v = 0.5, 1.0 (= θ: dvsguard fires, NIR does not), then 1.5 / 0.5 …
    graph_path = tmp_path / "tie.nir"
    nir.write(str(graph_path), _sequential_graph(model))
    x = torch.ones(3, 1, 1, 1, 1)
    _, ref = model_spikes_seq(model, x)
    _, got = run_norse(graph_path, x)
    assert ref.flatten().tolist() == [False, True, False]
    assert got[0].flatten().tolist() == [False, False, True]


def _sequential_graph(model: nn.Sequential) -> nir.NIRGraph:
    lin, out = model[1], model[3]
    nodes = {
        "input": nir.Input(input_type={"input": np.array([1, 1, 1])}),
        "flat": nir.Flatten(input_type={"input": np.array([1, 1, 1])}, start_dim=0, end_dim=-1),
        "lin": nir.Affine(weight=lin.weight.detach().numpy(), bias=lin.bias.detach().numpy()),
        "lin.if": nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.zeros(1)),
        "out": nir.Affine(weight=out.weight.detach().numpy(), bias=out.bias.detach().numpy()),
        "output": nir.Output(output_type={"output": np.array([1])}),
    }
    chain = ["input", "flat", "lin", "lin.if", "out", "output"]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain, chain[1:])))


def model_spikes_seq(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain Sequential over ``[T, B, ...]``: IF sees ``[T, B, N]``, the rest ``[T·B, ...]``."""
    t, b = x.shape[:2]
    h = model[1](model[0](x.flatten(0, 1)))
    spikes = model[2](h.view(t, b, -1))
    return model[3](spikes.flatten(0, 1)), spikes > 0


def test_unmappable_module_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), IFNeuron(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    with pytest.raises(ExportError, match="2: cannot map MaxPool2d"):
        to_nir(model, (2, 16, 16))


def _export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvsguard", "export", *args, "--json"],
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_netx_and_nir_and_compares_both(tmp_path: Path) -> None:
    cache = make_test_cache(tmp_path / "rec", n=8)
    ckpt = save_model_checkpoint(tmp_path / "tiny.pt", tiny_model(), cache)
    proc = _export(str(ckpt), "--out", str(tmp_path / "out"), "--format", "netx,nir", "--compare")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(doc["net"]).exists() and Path(doc["nir"]).exists()
    assert "SumPool2d" in doc["nir_primitives"] and "IF" in doc["nir_primitives"]
    assert doc["compare"]["n"] == doc["compare_nir"]["n"] == 8
    assert doc["compare_nir"]["agreement"] == 1.0

    only = _export(str(ckpt), "--out", str(tmp_path / "nir-only"), "--format", "nir")
    assert only.returncode == 0, only.stderr
    doc = json.loads(only.stdout.strip().splitlines()[-1])
    assert doc["net"] is None and sorted(p.suffix for p in (tmp_path / "nir-only").iterdir()) == [".nir"]
    back = nir.read(doc["nir"])
    x = to_model_input(random_counts(3, seed=9))
    logits, _ = run_norse(doc["nir"], x)
    with torch.no_grad():
        np.testing.assert_allclose(logits.numpy(), tiny_model()(x).numpy(), atol=1e-4)
    assert "output" in back.nodes


def test_cli_refuses_verify_without_netx_and_unknown_formats(tmp_path: Path) -> None:
    ckpt = save_model_checkpoint(tmp_path / "tiny.pt", tiny_model())
    proc = _export(str(ckpt), "--out", str(tmp_path / "o"), "--format", "nir", "--verify", "1")
    assert proc.returncode != 0 and "--verify" in proc.stderr and "netx" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = _export(str(ckpt), "--out", str(tmp_path / "o"), "--format", "onnx")
    assert bad.returncode == 2 and "--format" in bad.stderr
    assert not (tmp_path / "o").exists()
