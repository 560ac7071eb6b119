"""Folding (BatchNorm, average pooling) is exact; integer scaling respects Loihi's limits;
the trained model is never changed; unmappable layers and values give clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dvsguard.errors import ExportError
from dvsguard.export.quantize import (
    BIAS_MAX,
    BIAS_MIN,
    VTH_MAX,
    WEIGHT_MAX,
    WEIGHT_MIN,
    extract_layers,
    fold_bn,
    pool_conv_kernel,
    pool_dense_weight,
    quantize_model,
)
from dvsguard.snn import IFNeuron, SpikingVGG, VGGConfig

from .conftest import CAP, T


def _random_bn(c: int, g: torch.Generator, dims: int = 2) -> nn.Module:
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(c).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) * 3 + 0.1)
        bn.weight.copy_(torch.randn(c, generator=g, dtype=torch.float64))
        bn.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return bn


def test_bn_folding_into_conv_and_linear_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True).double()
    bn = _random_bn(5, g)
    x = torch.randn(4, 3, 7, 6, generator=g, dtype=torch.float64)
    w, b = fold_bn(conv.weight.detach().numpy(), conv.bias.detach().numpy(), bn)
    expected = bn(conv(x)).detach()
    got = F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-12)

    lin = nn.Linear(8, 4, bias=False).double()
    bn1 = _random_bn(4, g, dims=1)
    x1 = torch.randn(6, 8, generator=g, dtype=torch.float64)
    w1, b1 = fold_bn(lin.weight.detach().numpy(), None, bn1)
    assert torch.allclose(F.linear(x1, torch.from_numpy(w1), torch.from_numpy(b1)), bn1(lin(x1)).detach(), atol=1e-12)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (1, 0), (5, 2)])
def test_pool_folded_into_conv_is_exact(k: int, kernel: int, padding: int) -> None:
    g = torch.Generator().manual_seed(k + kernel)
    x = torch.randn(2, 3, 8 * k // 2, 12, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, kernel, kernel, generator=g, dtype=torch.float64)
    expected = F.conv2d(F.avg_pool2d(x, k), w, padding=padding)
    big, stride, pad = pool_conv_kernel(w.numpy(), k, (padding, padding))
    assert big.shape == (4, 3, k * kernel, k * kernel) and stride == (k, k) and pad == (k * padding, k * padding)
    got = F.conv2d(x, torch.from_numpy(big), stride=stride, padding=pad)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 7)])  # odd sizes: AvgPool's floor drops a row/column
def test_pool_folded_into_dense_is_exact(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * w)
    x = torch.randn(3, 5, h, w, generator=g, dtype=torch.float64)
    n_in = 5 * (h // 2) * (w // 2)
    weight = torch.randn(6, n_in, generator=g, dtype=torch.float64)
    expected = F.linear(F.avg_pool2d(x, 2).flatten(1), weight)
    big = pool_dense_weight(weight.numpy(), 2, (5, h, w))
    got = F.linear(x.flatten(1), torch.from_numpy(big))
    assert torch.allclose(got, expected, atol=1e-12)


def test_integer_layers_respect_the_hardware_limits(tiny: SpikingVGG) -> None:
    q = quantize_model(tiny, (2, 16, 16), CAP, T)
    assert [layer.kind for layer in q.layers] == ["conv", "conv", "dense", "dense"]
    assert [layer.spiking for layer in q.layers] == [True, True, True, False]
    for layer in q.layers:
        assert WEIGHT_MIN <= layer.weight.min() and layer.weight.max() <= WEIGHT_MAX
        assert np.all(layer.weight % 2 == 0), "8-bit weights are stored as even integers"
        assert BIAS_MIN <= layer.bias.min() and layer.bias.max() <= BIAS_MAX
        assert 0 <= layer.vth <= VTH_MAX
        # the 8-bit range is used: the largest weight is near the limit
        assert max(layer.weight.max(), -layer.weight.min()) >= 64
    conv2 = q.layers[1]  # the 2×2 pooling before it became a 6×6 stride-2 kernel
    assert conv2.weight.shape[2:] == (6, 6) and conv2.stride == (2, 2) and conv2.padding == (2, 2)
    assert conv2.pool == 2 and conv2.vth % 4 == 0 and np.all(conv2.bias % 4 == 0)
    # tie-free: s·θ sits half an integer unit of the folded sums (1/(2k²)) above θ_int = vth/k²
    assert conv2.scale == conv2.vth / 4 + 1 / 8
    dense = q.layers[2]
    assert dense.weight.shape == (32, 16 * 8 * 8) and dense.flatten and dense.pool == 2
    assert q.lag == 4 and q.input_bits == 2
    # read-out v = output_scale · mean logits, output_scale = 2⁶ · s · k² · T of the last layer
    last = q.layers[-1]
    assert q.output_scale == pytest.approx(2**6 * last.scale * last.pool**2 * T, rel=1e-12)


def test_threshold_is_tie_free() -> None:
    """A lone IF layer: s·θ = θ_int + 1/2 and vThMant = θ_int, so netx's v > vThMant is the
    float u ≥ θ on the integer sums, and no integer sum equals s·θ."""
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.25, -0.5, 1.0]] * 3))
        lin.bias.zero_()
    model = nn.Sequential(nn.Flatten(), lin, IFNeuron(), nn.Linear(3, 2))
    q = quantize_model(model, (4, 1, 1), 1, 2)
    first = q.layers[0]
    theta_int = first.vth
    assert first.scale == theta_int + 0.5  # θ = 1
    np.testing.assert_array_equal(first.weight[0], np.round(np.array([0.5, 0.25, -0.5, 1.0]) * first.scale / 2) * 2)
    assert first.weight.max() == 254


def test_export_never_changes_the_model(tiny: SpikingVGG) -> None:
    before = copy.deepcopy(tiny.state_dict())
    tiny.train()
    quantize_model(tiny, (2, 16, 16), CAP, T)
    assert tiny.training, "the model's mode is left as it was"
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_maxpool_model_is_refused_naming_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), IFNeuron(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ExportError, match=r"^2: cannot map MaxPool2d"):
        extract_layers(model, (2, 8, 8))


def test_nan_weights_are_refused_naming_the_layer(tiny: SpikingVGG) -> None:
    broken = copy.deepcopy(tiny)
    with torch.no_grad():
        broken.features[4].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExportError, match=r"features\.4: weight holds NaN"):
        quantize_model(broken, (2, 16, 16), CAP, T)
    broken = copy.deepcopy(tiny)
    with torch.no_grad():
        broken.features[1].running_var[0] = float("inf")
    with pytest.raises(ExportError, match=r"features\.1: running_var holds NaN or infinite"):
        quantize_model(broken, (2, 16, 16), CAP, T)


@pytest.mark.parametrize(
    "model,message",
    [
        (nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), IFNeuron(), nn.Flatten(), nn.Linear(64, 3)), "stride 1"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 3)), "no IF neuron yet"),
        (nn.Sequential(nn.Flatten(), nn.Linear(128, 3), IFNeuron()), "end with a Linear read-out"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), IFNeuron(), nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(196, 3)), "stride = kernel"),
        (nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(2, 4, 3, padding=1), IFNeuron(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), "divisible"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)), "cannot map ReLU"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), IFNeuron(), nn.Flatten(), nn.Linear(99, 3)), "expects 99 input features"),
    ],
)
def test_unmappable_structures_give_clear_errors(model: nn.Module, message: str) -> None:
    h = 9 if message == "divisible" else 8
    with pytest.raises(ExportError, match=message):
        extract_layers(model, (2, h, 8))


def test_dropout_is_the_identity_at_inference() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), IFNeuron(), nn.Dropout(0.3),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
    layers = extract_layers(model.eval(), (2, 8, 8))
    assert [la.sources for la in layers] == [["0", "1", "2"], ["6"]]
    assert layers[1].pool == 2


def test_large_bias_is_clipped_and_reported() -> None:
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.5], [0.01, 0.02, 0.03, 0.04]]))
        lin.bias.copy_(torch.tensor([500.0, 0.0]))  # 500 θ: cannot be held next to 8-bit weights
    model = nn.Sequential(nn.Flatten(), lin, IFNeuron(), nn.Linear(2, 2))
    q = quantize_model(model, (4, 1, 1), 1, 2)
    assert q.layers[0].clipped["bias"] == 1
    assert q.layers[0].bias.max() == BIAS_MAX
    assert any("bias value(s) clipped" in w for w in q.warnings)


def test_paper_head_does_not_fit_a_chip_and_is_reported() -> None:
    """The paper's 4096-wide head (here on a small feature stack) alone needs > 128 cores."""
    from dvsguard.export.netx import format_resource_table, resource_table

    model = SpikingVGG(VGGConfig.preset("vgg11", channels=(8, "A"), input_size=16)).eval()
    q = quantize_model(model, (2, 16, 16), 15, 10)
    table = resource_table(q)
    assert not table["fits_chip"] and f"{table['chips']} Loihi 2 chips" in table["problems"][0] and table["chips"] > 1
    rows = {r["name"]: r for r in table["rows"]}
    assert rows["classifier.3"]["weight_bytes"] == 4096 * 4096
    head = rows["classifier.3"]  # 4096 inputs: a few neurons per core fill its 12000 synapse words
    assert head["words_per_core"] <= 12000 < 4096 * -(-(head["neurons_per_core"] + 4) // 4)
    assert head["cores"] == -(-4096 // head["neurons_per_core"]) > 128
    assert rows["classifier.1"]["fan_in"] == 8 * 16 * 16  # the pooling folded into the first Linear
    assert rows["features.0"]["synapses"] == 8 * 2 * (16 * 3 - 2) ** 2  # border taps excluded
    assert "does NOT fit one Loihi 2 chip" in format_resource_table(table)


@pytest.mark.parametrize("pool", [1, 2])
def test_float_model_on_the_grid_decides_spikes_like_the_integer_rule(pool: int) -> None:
    """With s·θ = θ_int + 1/(2k²), float32 currents of on-grid weights summed over steps fire
    (u ≥ 1) exactly when the integer sum exceeds vThMant, also for sums right at the threshold."""
    from dvsguard.snn.fixed_point import choose_scale, theta_int_of, vth_mant

    rng = np.random.default_rng(pool)
    weight = rng.normal(0, 0.05, size=(16, 64))
    s, notes = choose_scale("layer", weight, rng.normal(0, 0.1, size=16), 1.0, pool, 10)
    assert not notes
    vth = vth_mant(theta_int_of("layer", s, 1.0, pool), pool)
    unit = torch.tensor(pool * pool * s, dtype=torch.float32)
    for total in range(vth - 40, vth + 40):
        for _ in range(5):  # the integer sum split into 10 steps of any sign
            cuts = np.sort(rng.integers(-3 * vth, 3 * vth, size=9))
            steps = np.diff(np.concatenate([[0], cuts, [total]]))
            u = torch.zeros((), dtype=torch.float32)
            for n in steps:
                u = u + torch.tensor(float(n), dtype=torch.float32) / unit
            assert bool(u >= 1.0) == (total > vth), (total, vth, float(u))


def test_scale_rule_keeps_a_step_inside_24_bits_or_reports() -> None:
    from dvsguard.snn.fixed_point import SUM_LIMIT, choose_scale, weight_scale_limit

    rng = np.random.default_rng(0)
    moderate = rng.normal(0, 0.05, size=(8, 2000))  # 2000 inputs: one step's worst case binds
    s, notes = choose_scale("dense", moderate, np.zeros(8), 1.0, 2, 10)
    worst = max(np.clip(moderate, 0, None).sum(1).max(), np.clip(-moderate, 0, None).sum(1).max()) * 4
    assert s * worst < SUM_LIMIT and not notes
    assert s < weight_scale_limit(moderate)
    huge = rng.normal(0, 0.05, size=(8, 200_000))  # keeping it would cost more than 2 bits
    s, notes = choose_scale("wide", huge, np.zeros(8), 1.0, 2, 10)
    assert s >= weight_scale_limit(huge) / 4 - 1 and "wide: a step's synaptic input may exceed 24 bits" in notes[0]
