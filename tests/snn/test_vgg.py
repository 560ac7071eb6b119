"""Spiking VGG: config, presets, shapes, layer kinds, input checks, gradients, bf16 option."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.snn.neuron import IFNeuron, gradient_mode, gradient_modes
from dvsguard.snn.surrogate import PAPER_ENSEMBLE, RGA
from dvsguard.snn.vgg import PAPER_CHANNELS, SpikingVGG, VGGConfig, count_macs, num_parameters


def test_paper_preset_shapes() -> None:
    cfg = VGGConfig.preset("vgg11")
    assert cfg.channels == PAPER_CHANNELS
    assert cfg.head == (4096, 4096) and cfg.input_size == 48 and cfg.in_channels == 2
    assert cfg.feature_size == 6 and cfg.flat_features == 18432
    # ~13.3 GMAC per sample for a 10-step forward pass
    assert 10 * count_macs(cfg) == pytest.approx(13.3e9, rel=0.01)


def test_paper_model_layers_without_allocating_weights() -> None:
    with torch.device("meta"):
        model = SpikingVGG(VGGConfig.preset("vgg11"))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.features) == 3
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(18432, 4096), (4096, 4096), (4096, 10)]
    allowed = (nn.Conv2d, nn.BatchNorm2d, IFNeuron, nn.AvgPool2d, nn.Flatten, nn.Linear)
    assert all(isinstance(m, allowed) for m in [*model.features, *model.classifier])
    # pattern conv → BN → IF
    feats = list(model.features)
    for i, m in enumerate(feats):
        if isinstance(m, nn.Conv2d):
            assert isinstance(feats[i + 1], nn.BatchNorm2d) and isinstance(feats[i + 2], IFNeuron)


def test_loihi_preset_is_smaller() -> None:
    cfg = VGGConfig.preset("vgg11-loihi")
    assert cfg.channels == PAPER_CHANNELS and cfg.head == (512,)
    head_synapses = cfg.flat_features * 512 + 512 * cfg.num_classes
    assert head_synapses < 16_000_000


def test_vgggesture_preset_is_the_authors_gesture_model() -> None:
    cfg = VGGConfig.preset("vgggesture")
    assert cfg.channels == (16, 32, "A", 32, 32, "A") and cfg.head == () and cfg.num_classes == 11
    assert (cfg.input_size, cfg.flat_features) == (48, 12 * 12 * 32)
    model = SpikingVGG(VGGConfig.preset("vgggesture", input_size=64)).eval()
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].in_features == 16 * 16 * 32
    assert model(torch.rand(2, 3, 2, 64, 64)).shape == (3, 11)


@pytest.mark.parametrize("name", VGGConfig.preset_names())
def test_config_round_trip(name: str) -> None:
    cfg = VGGConfig.preset(name)
    d = cfg.to_dict()
    # the dict survives JSON (as in config.json and checkpoints) and gives the same config back
    assert json.loads(json.dumps(d)) == d
    assert VGGConfig.from_dict(json.loads(json.dumps(d))) == cfg


@pytest.mark.parametrize(
    "kw",
    [{"channels": (8, "B")}, {"channels": ("A",)}, {"head": (0,)}, {"input_size": 50},
     {"num_classes": 0}, {"in_channels": True}],
)
def test_config_rejects(kw: dict) -> None:
    with pytest.raises(ConfigError):
        VGGConfig.preset("tiny", **kw)


def test_from_dict_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        VGGConfig.from_dict({**VGGConfig().to_dict(), "width": 3})
    with pytest.raises(ConfigError, match="unknown model preset"):
        VGGConfig.preset("resnet")


def test_init_is_kaiming_normal() -> None:
    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("small"))
    conv = [m for m in model.features if isinstance(m, nn.Conv2d)][-1]
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    lin = [m for m in model.classifier if isinstance(m, nn.Linear)][0]
    assert lin.weight.std().item() == pytest.approx((2 / lin.in_features) ** 0.5, rel=0.1)
    assert torch.all(lin.bias == 0)


@pytest.fixture
def tiny() -> SpikingVGG:
    torch.manual_seed(0)
    return SpikingVGG(VGGConfig.preset("tiny"))


def test_forward_shape_and_logits_are_time_mean(tiny: SpikingVGG) -> None:
    x = torch.rand(5, 3, 2, 16, 16)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
             for m in tiny.features if isinstance(m, nn.Conv2d)]
    logits = tiny(x)
    for h in hooks:
        h.remove()
    assert seen == [True, True], "convolutions should see channels-last activations"
    assert logits.shape == (3, 10) and logits.dtype == torch.float32
    # recompute by hand: classifier output per step, averaged over T
    outs = []
    h = x.flatten(0, 1)
    h = tiny.features[0](h)
    h = tiny.features[1](h)
    h = tiny.features[2](h.view(5, 3, *h.shape[1:])).flatten(0, 1)
    for m in list(tiny.features)[3:]:
        h = m(h.view(5, 3, *h.shape[1:])).flatten(0, 1) if isinstance(m, IFNeuron) else m(h)
    for m in tiny.classifier:
        h = m(h.view(5, 3, *h.shape[1:])).flatten(0, 1) if isinstance(m, IFNeuron) else m(h)
    outs = h.view(5, 3, -1).mean(0)
    torch.testing.assert_close(logits, outs)


def test_samples_are_independent_in_eval(tiny: SpikingVGG) -> None:
    tiny.eval()
    x = torch.rand(4, 3, 2, 16, 16)
    full = tiny(x)
    single = tiny(x[:, 1:2])
    torch.testing.assert_close(full[1:2], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape", [(3, 2, 16, 16), (4, 3, 1, 16, 16), (4, 3, 2, 16, 15), (4, 3, 2, 32, 32), (0, 3, 2, 16, 16)]
)
def test_forward_rejects_wrong_shape(tiny: SpikingVGG, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[T, B, 2, 16, 16\]"):
        tiny(torch.rand(shape))


def test_forward_rejects_non_finite_and_int(tiny: SpikingVGG) -> None:
    x = torch.rand(4, 2, 2, 16, 16)
    x[1, 0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tiny(x)
    x[1, 0, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny(x)
    with pytest.raises(ValueError, match="float"):
        tiny(torch.ones(4, 2, 2, 16, 16, dtype=torch.uint8))


def test_gradients_reach_input_and_every_parameter(tiny: SpikingVGG) -> None:
    torch.manual_seed(1)
    x = (torch.rand(6, 4, 2, 16, 16)).requires_grad_()
    loss = nn.functional.cross_entropy(tiny(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in tiny.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_every_gradient_mode_gives_input_gradient(tiny: SpikingVGG) -> None:
    tiny.eval()
    x = torch.rand(6, 2, 2, 16, 16)
    y = torch.tensor([1, 7])
    grads = []
    for mode in PAPER_ENSEMBLE:
        with gradient_mode(tiny, mode):
            xg = x.clone().requires_grad_()
            nn.functional.cross_entropy(tiny(xg), y).backward()
            grads.append(xg.grad)
            assert xg.grad.abs().sum() > 0, str(mode)
    assert set(gradient_modes(tiny).values()) == {PAPER_ENSEMBLE[0]}
    assert not torch.allclose(grads[0], grads[3])  # triangle vs rga differ


def test_bf16_autocast_option(tiny: SpikingVGG) -> None:
    tiny.eval()
    x = torch.rand(6, 3, 2, 16, 16)
    ref = tiny(x)
    tiny.autocast_bf16 = True
    got = tiny(x.clone().requires_grad_())
    assert got.dtype == torch.float32 and got.shape == ref.shape
    got.sum().backward()
    assert (got - ref).abs().max() < 0.5 * ref.abs().max() + 1e-3


def test_small_preset_size() -> None:
    model = SpikingVGG(VGGConfig.preset("small"))
    assert 10_000 < num_parameters(model) < 500_000
    assert model(torch.rand(2, 2, 2, 48, 48)).shape == (2, 10)


def test_rga_matches_per_step_form_in_eval(tiny: SpikingVGG, monkeypatch: pytest.MonkeyPatch) -> None:
    """In eval mode ∂L/∂s is the same at every step, so g(ī)·mean_t ∂L/∂s[t] (ours) equals the
    released code's per-step g(ī)·∂L/∂s[t]; the input gradient is then constant over time."""
    from dvsguard.snn import neuron
    from dvsguard.snn.surrogate import rate_grad

    tiny.eval()
    x = torch.rand(5, 3, 2, 16, 16)
    y = torch.tensor([0, 4, 9])

    def input_grad() -> torch.Tensor:
        xg = x.clone().requires_grad_()
        with gradient_mode(tiny, RGA):
            nn.functional.cross_entropy(tiny(xg), y).backward()
        return xg.grad

    ours = input_grad()

    def per_step_backward(ctx, grad_s):
        (i_mean,) = ctx.saved_tensors
        return (rate_grad(i_mean, ctx.threshold) * grad_s.to(i_mean.dtype)).to(ctx.in_dtype), None, None

    monkeypatch.setattr(neuron._IFRate, "backward", staticmethod(per_step_backward))
    theirs = input_grad()
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, ours[:1].expand_as(ours), rtol=1e-5, atol=1e-7)


def test_torch_linear_init_matches_torch_default_bound() -> None:
    # the authors' VGG keeps torch's nn.Linear weight draw, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), zero biases
    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("vgg11-loihi", linear_init="torch"))
    lin = [m for m in model.classifier if isinstance(m, nn.Linear)][0]
    assert lin.in_features == 18432
    bound = 1 / lin.in_features**0.5
    assert float(lin.weight.detach().abs().max()) <= bound
    assert lin.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.01)
    assert all(torch.all(m.bias == 0) for m in model.classifier if isinstance(m, nn.Linear))
    conv = [m for m in model.features if isinstance(m, nn.Conv2d)][-1]  # convolutions stay kaiming-normal
    assert conv.weight.std().item() == pytest.approx((2 / (conv.out_channels * 9)) ** 0.5, rel=0.1)


def test_linear_init_is_recorded_and_defaults_to_kaiming_for_old_configs() -> None:
    cfg = VGGConfig.preset("tiny", linear_init="torch")
    assert cfg.to_dict()["linear_init"] == "torch" and VGGConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in VGGConfig.preset("tiny").to_dict().items() if k != "linear_init"}
    assert VGGConfig.from_dict(old).linear_init == "kaiming"
    with pytest.raises(ConfigError, match="linear_init 'xavier' is unknown"):
        VGGConfig.preset("tiny", linear_init="xavier")
