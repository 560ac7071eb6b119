"""The integer simulator: equal to PyTorch run with the quantized weights (spike for spike),
equal to the literal Lava timeline, and faithful to netx's reading of weights."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dvsguard.errors import ExportError
from dvsguard.export.intsim import READERS, compare, dense_effective, frame_aligned, load_netx, simulate, stream
from dvsguard.export.netx import WRITERS, write_netx
from dvsguard.export.quantize import QuantizedNet, quantize_model
from dvsguard.snn import IFNeuron, SpikingVGG, if_spikes

from .conftest import CAP, LAVA_DL_FILES, T, handmade_frames, lava_dl_frames, random_counts, tiny_model, to_model_input, write_handmade


def torch_reference(model: nn.Module, q: QuantizedNet, counts: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the model's own layer sequence in PyTorch (float64, exact on integers) with the
    quantized weights: every Conv2d/Linear gets its integer weights and bias (pooling NOT
    folded: the original 3×3 kernels after AvgPool2d), BatchNorm is already folded, each
    IF neuron gets its integer threshold θ_int = (vThMant + 1) / k². Input: the counts.

    Returns (spikes of every IF layer ``[T, N, ...]``, Σ_t read-out ·2⁶ ``[N, n_out]``).
    """
    t, n = counts.shape[1], counts.shape[0]
    h = torch.from_numpy(counts).double().transpose(0, 1).flatten(0, 1)  # [T·N, C, H, W]
    layers = iter(q.layers)
    current = None
    spikes = []
    for name, m in [*model.features.named_children(), *model.classifier.named_children()]:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            current = next(layers)
            k, p2 = current.pool, current.pool**2
            w = torch.from_numpy(current.weight).double()
            if isinstance(m, nn.Conv2d):
                w = w[:, :, ::k, ::k]  # undo the folding: the 3×3 integer kernel
                h = F.conv2d(h, w, torch.from_numpy(current.bias / p2).double(), padding=m.padding)
            else:
                if k > 1:
                    c, hh, ww = model.cfg.feature_channels, model.cfg.feature_size * k, model.cfg.feature_size * k
                    w = w.reshape(w.shape[0], c, hh, ww)[:, :, ::k, ::k].reshape(w.shape[0], -1)
                h = F.linear(h, w, torch.from_numpy(current.bias / p2).double())
        elif isinstance(m, nn.BatchNorm2d):
            continue  # folded
        elif isinstance(m, IFNeuron):
            theta = (current.vth + 1) / current.pool**2
            s = if_spikes(h.view(t, n, *h.shape[1:]), threshold=theta)
            spikes.append(s)
            h = s.flatten(0, 1)
        else:
            h = m(h)
    readout = h.view(t, n, -1).sum(0) * 64
    return spikes, readout


def test_integer_simulator_equals_pytorch_with_the_quantized_weights(tmp_path: Path) -> None:
    model = tiny_model(seed=3)
    q = quantize_model(model, (2, 16, 16), CAP, T)
    net = load_netx(write_netx(q, tmp_path / "tiny.net"))
    counts = random_counts(12, seed=5)
    sim = simulate(net, counts, record=True, batch=5)
    ref_spikes, ref_readout = torch_reference(model, q, counts)
    assert len(ref_spikes) == 3
    for k, s in enumerate(ref_spikes):
        mine = sim.spikes[k].swapaxes(0, 1)  # [T, N, ...]
        assert 0.02 < mine.mean() < 0.9, f"layer {k} should be active for a meaningful check"
        np.testing.assert_array_equal(mine, s.numpy().astype(bool), err_msg=f"layer {k}")
    np.testing.assert_array_equal(sim.v_out, ref_readout.numpy().astype(np.int64))
    assert not any(sim.events.values()), sim.events


def test_quantized_network_agrees_with_the_float_model(tmp_path: Path) -> None:
    model = tiny_model(seed=4)
    q = quantize_model(model, (2, 16, 16), CAP, T)
    path = write_netx(q, tmp_path / "tiny.net")
    counts = random_counts(64, seed=9)
    x = to_model_input(counts)
    loader = [(x[:, i : i + 16], torch.zeros(16, dtype=torch.int64)) for i in range(0, 64, 16)]
    result = compare(model, path, loader)
    assert result["n"] == 64 and not any(result["events"].values())
    # random weights give small logit margins (median ≈ 0.1) where a flipped spike
    # matters; a trained model agrees far better (see the report's measured figures)
    assert result["agreement"] >= 0.6, result
    assert result["logit_rel_error"] < 0.5, result
    first_if = []
    hook = model.features[2].register_forward_hook(lambda mod, i, o: first_if.append(o.numpy()))
    with torch.no_grad():
        lf = model(x).numpy()
    hook.remove()
    sim = simulate(load_netx(path), counts, record=True)
    # the first layer sees exact inputs: only its 8-bit rounding can flip a spike
    flips = (sim.spikes[0].swapaxes(0, 1).reshape(first_if[0].shape) != (first_if[0] > 0.5)).mean()
    assert flips < 0.01, flips
    assert np.corrcoef(lf.ravel(), (sim.v_out / q.output_scale).ravel())[0, 1] > 0.9


def test_stream_timeline_equals_per_sample_simulation(tmp_path: Path) -> None:
    """Leaky neurons, odd weights, rectangular maps: the back-to-back Lava timeline with
    staggered resets gives exactly the per-sample result, frame for frame."""
    net = load_netx(write_handmade(tmp_path / "hand.net", leaky=True))
    frames = handmade_frames(4)
    sim = simulate(net, frames, record=True)
    st = stream(net, frames, 5)
    assert st["steps"] == 4 * 5 + 4
    np.testing.assert_array_equal(st["v_out"], sim.v_out)
    for k in range(4):
        np.testing.assert_array_equal(frame_aligned(st["spikes"][k], k, 4, 5), sim.spikes[k])
        assert sim.spikes[k].any() or k == 3
    # and a sample's result does not depend on its neighbours
    alone = simulate(net, frames[2:3], record=True)
    np.testing.assert_array_equal(alone.v_out[0], sim.v_out[2])


@pytest.mark.parametrize(
    "weight",
    [
        np.array([[-256, 254, 2, -4]]),  # mixed, even: unchanged, exponent 0
        np.array([[3, 5, 0, 7]]),  # excitatory small odd: shifted up, exponent < 0
        np.array([[-3, -128, -1, 0]]),  # non-positive: lava-nc treats it as inhibitory
        np.array([[12, -40, 64, 8]]),  # mixed, multiples of 4
    ],
)
def test_dense_weights_pass_netx_rescaling_exactly(weight: np.ndarray) -> None:
    eff, exp = dense_effective(weight)
    assert exp <= 0
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 2, size=weight.shape[1])
        assert (eff @ s) >> -exp == weight @ s


def test_simulator_reads_every_layer_type_the_exporter_writes() -> None:
    assert list(READERS) == list(WRITERS)


def test_simulator_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    path = write_handmade(tmp_path / "hand.net")
    with h5py.File(path, "a") as f:
        del f["layer/2/type"]
        f["layer/2"].create_dataset("type", data=np.array([b"pool"]))
    with pytest.raises(ExportError, match=r"layer 2 \(pool\): layer type 'pool' is not supported"):
        load_netx(path)
    (tmp_path / "junk.net").write_bytes(b"not hdf5")
    with pytest.raises(ExportError, match="not a readable netx file"):
        load_netx(tmp_path / "junk.net")
    net = load_netx(write_handmade(tmp_path / "ok.net"))
    with pytest.raises(ExportError, match=r"input frames must be \[N, T, 2, 9, 7\]"):
        simulate(net, np.zeros((1, 5, 2, 7, 9), dtype=int))


@pytest.mark.slow  # a wall-clock claim: not for the default suite on a shared machine
def test_simulator_scores_a_test_split_quickly(tmp_path: Path) -> None:
    """The small preset (48×48, 7 layers) at T=10: well under a second per sample."""
    import time

    from dvsguard.snn import VGGConfig

    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("small")).eval()
    q = quantize_model(model, (2, 48, 48), 15, 10)
    net = load_netx(write_netx(q, tmp_path / "small.net"))
    counts = random_counts(8, t=10, shape=(2, 48, 48), cap=15)
    start = time.perf_counter()
    simulate(net, counts)
    per_sample = (time.perf_counter() - start) / 8
    assert per_sample < 0.5, per_sample


def _quadrant_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse noise plus a dense blob of events in one of 4 quadrants (the label)."""
    rng = np.random.default_rng(seed)
    counts = random_counts(n, seed=seed, density=0.05)
    y = rng.integers(0, 4, n)
    for i in range(n):
        qy, qx = divmod(int(y[i]), 2)
        blob = rng.integers(1, CAP + 1, size=(T, 2, 8, 8)) * (rng.random((T, 2, 8, 8)) < 0.35)
        region = counts[i, :, :, qy * 8 : (qy + 1) * 8, qx * 8 : (qx + 1) * 8]
        np.maximum(region, blob, out=region)
    return counts, y


@pytest.mark.slow
def test_trained_model_integer_network_agrees_with_pytorch(tmp_path: Path) -> None:
    """A tiny model trained for a few Adam steps: on fresh samples the integer network
    predicts what PyTorch predicts on ≥ 99% of them."""
    from dvsguard.snn import VGGConfig

    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("tiny", num_classes=4))
    xs, ys = _quadrant_data(512, 0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for step in range(40):
        idx = np.random.default_rng(step).integers(0, 512, 32)
        loss = F.cross_entropy(model(to_model_input(xs[idx])), torch.from_numpy(ys[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = _quadrant_data(256, 1)
    path = write_netx(quantize_model(model, (2, 16, 16), CAP, T), tmp_path / "trained.net")
    loader = [(to_model_input(xt[i : i + 64]), torch.from_numpy(yt[i : i + 64])) for i in range(0, 256, 64)]
    result = compare(model, path, loader)
    assert result["accuracy_float"] > 0.9, "the model should have learnt the task"
    assert result["agreement"] >= 0.99, result


def test_failed_netx_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsguard.export import netx

    q = quantize_model(tiny_model(seed=3), (2, 16, 16), CAP, T)
    path = write_netx(q, tmp_path / "tiny.net")
    before = path.read_bytes()

    def broken(group: h5py.Group, net: QuantizedNet, layer: object) -> None:
        raise OSError("disk full")

    monkeypatch.setitem(netx.WRITERS, "dense", broken)
    with pytest.raises(OSError, match="disk full"):
        write_netx(q, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.net"]



@pytest.mark.parametrize("multiple", [1, 2, 4, 16])
def test_dense_rescaling_keeps_weights_int32_and_exact(multiple: int) -> None:
    """Weights shared multiples of 2**k (netx's trailing-bit search) pass rescaling exactly, held as int32."""
    rng = np.random.default_rng(multiple)
    w = rng.integers(-128 // multiple, 127 // multiple + 1, size=(6, 40)) * multiple
    w[0, :2] = (multiple, -multiple)
    eff, exp = dense_effective(w)
    assert eff.dtype == np.int32 and exp <= 0
    s = rng.integers(0, 2, size=(40, 8))
    np.testing.assert_array_equal((eff.astype(np.int64) @ s) >> -exp, w @ s)


# --------------------------------------------------------------------------- lava-dl's own files

PILOTNET_KINDS = ["input"] + ["conv"] * 5 + ["dense"] * 4
PILOTNET_SHAPES = [(3, 66, 200), (24, 32, 99), (36, 15, 49), (48, 7, 24), (64, 4, 22), (64, 2, 20), (100,), (50,), (10,), (1,)]


def _file_neurons(path: Path) -> list[tuple[int, int, int]]:
    """(vThMant, iDecay, vDecay) of every layer group with a neuron, in order, read with h5py."""
    with h5py.File(path, "r") as f:
        groups = [f["layer"][str(i)] for i in range(len(f["layer"]))]
        return [tuple(int(g["neuron"][k][()]) for k in ("vThMant", "iDecay", "vDecay")) for g in groups if "neuron" in g]


def test_lava_dl_pilotnet_loads_and_simulates(lava_dl_netx: Path) -> None:
    """lava-dl's PilotNet SNN: an input layer with its own LOIHI neuron, five convs (one with
    stride (2, 1) and padding (1, 0)), flatten, four dense layers; every layer but the read-out fires."""
    path = lava_dl_netx / "pilotnet_snn.net"
    net = load_netx(path)
    assert [layer.kind for layer in net.layers] == PILOTNET_KINDS
    assert [layer.out_shape for layer in net.layers] == PILOTNET_SHAPES
    assert net.input_shape == (3, 66, 200) and net.input_delay == 0
    assert net.input_transform == {"weight": 40, "bias": 36}
    assert [(layer.vth, layer.i_decay, layer.v_decay) for layer in net.layers] == _file_neurons(path)
    assert net.layers[-1].vth == 131071 and net.layers[-1].v_decay == 0 and net.layers[0].v_decay == 1024
    assert (net.layers[4].stride, net.layers[4].padding) == ((2, 1), (1, 0))
    assert net.layers[6].flatten and net.layers[6].in_shape == (2560,)
    assert not net.layers[0].bias.any()  # the file's input bias is the data transform's
    frames = lava_dl_frames("pilotnet_snn.net", net.input_shape, 2, 4)
    sim = simulate(net, frames, record=True)
    assert sim.v_out.shape == (2, 1) and sim.v_out.any()
    for k, s in enumerate(sim.spikes[:-1]):
        assert s.shape == (2, 4, *PILOTNET_SHAPES[k]) and s.any(), f"layer {k} should fire"
    assert not any(sim.events.values()), sim.events


def test_lava_dl_mnist_loads_and_simulates(lava_dl_netx: Path) -> None:
    """lava-dl's MNIST network: no input layer (the input is the first dense layer's 784
    binary inputs), three dense layers of leaky CUBA neurons."""
    path = lava_dl_netx / "mnist.net"
    net = load_netx(path)
    assert [(layer.kind, layer.in_shape, layer.out_shape) for layer in net.layers] == [
        ("dense", (784,), (128,)),
        ("dense", (128,), (64,)),
        ("dense", (64,), (10,)),
    ]
    assert net.input_shape == (784,) and net.input_delay == 1 and net.input_transform is None
    assert [(layer.vth, layer.i_decay, layer.v_decay) for layer in net.layers] == _file_neurons(path) == [(64, 410, 410)] * 3
    assert not any(layer.graded for layer in net.layers)
    sim = simulate(net, lava_dl_frames("mnist.net", (784,), 3, 8), record=True)
    assert sim.v_out.shape == (3, 10)
    assert all(s.any() for s in sim.spikes), [int(s.sum()) for s in sim.spikes]


@pytest.mark.parametrize("name", LAVA_DL_FILES)
def test_lava_dl_files_step_by_step_timeline_equals_simulation(lava_dl_netx: Path, name: str) -> None:
    """The literal Lava timeline (an input neuron integrates the source in the step it is sent,
    a synapse one step later) gives the per-sample result, frame for frame."""
    net = load_netx(lava_dl_netx / name)
    n, t = 2, 3
    frames = lava_dl_frames(name, net.input_shape, n, t, seed=1)
    sim = simulate(net, frames, record=True)
    st = stream(net, frames, t)
    assert st["steps"] == n * t + len(net.layers) - 1 + net.input_delay
    np.testing.assert_array_equal(st["v_out"], sim.v_out)
    for k in range(len(net.layers)):
        np.testing.assert_array_equal(frame_aligned(st["spikes"][k], k, n, t, net.input_delay), sim.spikes[k], err_msg=f"layer {k}")


def _replace(f: h5py.File, group: str, name: str, value: object) -> None:
    """Replace ``group/name`` in f by a dataset of ``value`` (a group of datasets for a dict, nothing for None)."""
    g = f[group]
    if name in g:
        del g[name]
    if isinstance(value, dict):
        for key, data in value.items():
            g.create_dataset(f"{name}/{key}", data=data)
    elif value is not None:
        g.create_dataset(name, data=value)


# feature → (group, field, new value, expected message) on the hand-made file
UNSUPPORTED = {
    "neuron type": ("layer/1/neuron", "type", np.array([b"SDNN"]), r"layer 1 \(conv\): neuron type 'SDNN' is not supported"),
    "graded spikes": ("layer/2/neuron", "messageBits", 16, r"layer 2 \(conv\): graded output spikes"),
    "decay range": ("layer/4/neuron", "iDecay", 5000, r"layer 4 \(dense\): neuron iDecay 5000 is outside 0\.\.4096"),
    "no neuron": ("layer/5", "neuron", None, r"layer 5 \(dense\): no neuron group"),
    "delay": ("layer/4", "delay", np.ones(6, dtype=int), r"layer 4 \(dense\): synaptic delays are not supported"),
    "recurrent layer": ("layer/5", "type", np.array([b"dense_rec"]), r"layer 5 \(dense_rec\): layer type 'dense_rec' is not supported"),
    "complex weights": ("layer/5", "weight", {"real": np.ones((5, 6)), "imag": np.ones((5, 6))}, r"layer 5 \(dense\): complex weights"),
    "groups": ("layer/2", "groups", 2, r"layer 2 \(conv\): groups are not supported"),
    "neuron-wise bias": ("layer/1", "bias", np.zeros((4, 5, 4)), r"layer 1 \(conv\): bias of 80 values for 4 output channels"),
    "late input layer": ("layer/3", "type", np.array([b"input"]), r"layer 3 \(input\): an input layer after the first layer"),
}


@pytest.mark.parametrize("feature", list(UNSUPPORTED))
def test_unsupported_netx_feature_is_a_one_line_error_naming_layer_and_feature(tmp_path: Path, feature: str) -> None:
    group, name, value, message = UNSUPPORTED[feature]
    path = write_handmade(tmp_path / "hand.net")
    load_netx(path)  # readable before the edit
    with h5py.File(path, "a") as f:
        _replace(f, group, name, value)
    with pytest.raises(ExportError, match=message) as err:
        load_netx(path)
    text = str(err.value)
    assert text.startswith(f"{path}: layer ") and "\n" not in text, text

