"""Defenses: adversarial batches within ε and the valid range, eval-mode attacks, RAT's retraction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.train.defenses import DEFENSES, make_defense, parseval_retraction
from dvsguard.train.losses import cross_entropy


class Recorder(nn.Module):
    """Wraps a model and records the inputs and training flags of each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.inner(x)


@pytest.mark.parametrize("name", ["fgsm-at", "pgd-at", "sr-star", "rat"])
def test_adversarial_batches_stay_within_eps_and_range(name, frames, tiny_net):
    x, y = frames
    x = x.clone()
    x[:, :, :, :2] = 0.0  # pixels at the lower bound
    x[:, :, :, -2:] = 1.0  # and at the upper bound
    eps = 8 / 255
    model = Recorder(tiny_net()).train()
    defense = make_defense(name, eps=eps, pgd_steps=3, generator=torch.Generator().manual_seed(0))
    loss, logits = defense.loss(model, x, y)
    assert torch.isfinite(loss) and logits.shape == (6, 4)
    attack_calls = [c for c in model.calls if not c[1]]
    train_calls = [c for c in model.calls if c[1]]
    assert len(attack_calls) == (3 if name == "pgd-at" else 1)  # attacks run in eval mode
    assert model.training  # and the mode is restored
    x_adv = train_calls[0][0]
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert (x_adv - x).abs().max() >= eps - 1e-6  # it did move by ε somewhere
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if name == "sr-star":
        assert len(train_calls) == 2  # SR's two passes, on the adversarial batch
        torch.testing.assert_close(logits, model.inner(x_adv))


def test_attacks_leave_batchnorm_statistics_alone(frames, tiny_net):
    x, y = frames
    net = tiny_net().train()
    before = net.bn.running_mean.clone()
    defense = make_defense("pgd-at", eps=4 / 255, pgd_steps=2, generator=torch.Generator().manual_seed(0))
    adv = defense.adversary(net, x, y)  # type: ignore[attr-defined]
    assert torch.equal(net.bn.running_mean, before)
    assert net.training
    assert adv.shape == x.shape


def test_fgsm_at_increases_the_loss(frames, tiny_net):
    x, y = frames
    torch.manual_seed(0)
    net = tiny_net().eval()
    defense = make_defense("fgsm-at", eps=8 / 255)
    clean = cross_entropy(net(x), y)
    adv_loss, _ = defense.loss(net, x, y)
    assert adv_loss > clean


def test_pgd_random_start_follows_the_generator(frames, tiny_net):
    x, y = frames
    net = tiny_net().eval()
    a = make_defense("pgd-at", pgd_steps=1, generator=torch.Generator().manual_seed(5)).adversary(net, x, y)
    b = make_defense("pgd-at", pgd_steps=1, generator=torch.Generator().manual_seed(5)).adversary(net, x, y)
    c = make_defense("pgd-at", pgd_steps=1, generator=torch.Generator().manual_seed(6)).adversary(net, x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sr_defense_is_ce_plus_lambda_r(frames, tiny_net):
    from dvsguard.train.losses import sparsity_regularizer

    x, y = frames
    net = tiny_net().eval()
    defense = make_defense("sr", lam=0.5, sr_form="abs")
    loss, logits = defense.loss(net, x, y)
    reg, _ = sparsity_regularizer(net, x, y, h=0.01, form="abs")
    torch.testing.assert_close(loss, cross_entropy(net(x), y) + 0.5 * reg)


def _orthogonality_gap(w: torch.Tensor) -> float:
    m = w.view(w.shape[0], -1)
    small = m.t() @ m if m.shape[0] >= m.shape[1] else m @ m.t()
    return float((small - torch.eye(small.shape[0])).norm())


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (8, 2, 3, 3)])
def test_parseval_retraction_moves_weights_toward_orthogonality(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape) * 0.3
    gaps = [_orthogonality_gap(w)]
    for _ in range(200):
        parseval_retraction(w, beta=0.05)
        gaps.append(_orthogonality_gap(w))
    assert gaps[1] < gaps[0]
    assert gaps[-1] < 0.1 * gaps[0]


def test_parseval_retraction_matches_the_formula():
    torch.manual_seed(1)
    w = torch.randn(5, 3, dtype=torch.float64)
    expected = 1.001 * w - 0.001 * w @ w.t() @ w
    parseval_retraction(w, beta=0.001)
    torch.testing.assert_close(w, expected)


def test_rat_retracts_conv_and_linear_weights_after_a_step(tiny_net):
    torch.manual_seed(0)
    net = tiny_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    rat = make_defense("rat", beta=5e-4)
    assert not rat.weight_decay_allowed
    rat.after_step(net)
    after = dict(net.named_parameters())
    for name in ("conv.weight", "fc.weight"):
        w = before[name].view(before[name].shape[0], -1)
        torch.testing.assert_close(after[name].detach().view_as(w), 1.0005 * w - 5e-4 * w @ w.t() @ w)
    for name in ("bn.weight", "bn.bias", "fc.bias"):
        assert torch.equal(after[name], before[name])


def test_registry_names_and_errors():
    assert tuple(DEFENSES) == ("vanilla", "sr", "fgsm-at", "pgd-at", "sr-star", "rat", "event-at")
    for name, cls in DEFENSES.items():
        defense = make_defense(name, count_cap=15)
        assert defense.name == name and isinstance(defense, cls)
        assert defense.last_terms == {}
    with pytest.raises(ConfigError, match="defense 'trades' is unknown"):
        make_defense("trades")
    with pytest.raises(ConfigError, match="sr-form"):
        make_defense("sr", sr_form="l2")
    assert make_defense("sr-star", attack="pgd").adversary.spec.kind == "pgd"  # type: ignore[attr-defined]
    assert make_defense("sr-star").adversary.spec.kind == "fgsm"  # type: ignore[attr-defined]
    assert make_defense("sr").adversary is None  # type: ignore[attr-defined]


def test_sr_star_is_sr_on_the_adversarial_batch(tiny_net, frames):
    """SR* = SR whose CE and SR terms are both taken on its adversary's examples."""
    torch.manual_seed(0)
    net = tiny_net()
    twin = copy.deepcopy(net)  # the losses update BatchNorm's running statistics
    x, y = frames
    star = make_defense("sr-star", attack="pgd", pgd_steps=2, generator=torch.Generator().manual_seed(4))
    loss, logits = star.loss(net, x, y)
    at = make_defense("pgd-at", pgd_steps=2, generator=torch.Generator().manual_seed(4))
    x_adv = at.adversary(twin, x, y)  # type: ignore[attr-defined]
    sr = make_defense("sr")
    want, want_logits = sr.loss(twin, x_adv, y)
    assert torch.equal(loss, want) and torch.equal(logits, want_logits)
    assert star.last_terms.keys() == {"ce", "sr"}
    assert all(torch.equal(star.last_terms[k], sr.last_terms[k]) for k in ("ce", "sr"))


def count_frames(cap: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of integer counts ``[T=3, B=6, 2, 8, 8]`` / ``cap`` (about half the bins empty, some at the
    cap) and labels ``[6]`` over 4 classes."""
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(-cap, cap + 1, (3, 6, 2, 8, 8), generator=g).clamp(min=0)
    return counts.float() / cap, torch.randint(0, 4, (6,), generator=g)


@pytest.mark.parametrize("name", ["event-at", "sr-star"])
def test_event_examples_are_whole_events_within_the_budget(name, tiny_net):
    """The event adversary's examples are counts / cap again, within 0..cap, at most `event_budget` events
    from the batch and found by ⌈budget / step⌉ eval-mode gradient passes."""
    x, y = count_frames()
    model = Recorder(tiny_net()).train()
    defense = make_defense(name, attack="events", count_cap=15, event_budget=10, step_events=4)
    loss, logits = defense.loss(model, x, y)
    assert torch.isfinite(loss) and logits.shape == (6, 4)
    attack_calls = [c for c in model.calls if not c[1]]
    train_calls = [c for c in model.calls if c[1]]
    assert len(attack_calls) == 3 and model.training
    assert len(train_calls) == (2 if name == "sr-star" else 1)
    counts = train_calls[0][0] * 15
    assert torch.equal(counts, counts.round()) and counts.min() >= 0 and counts.max() <= 15
    changed = (counts.round() - (x * 15).round()).abs().transpose(0, 1).flatten(1).sum(1)
    assert changed.max() <= 10 and changed.min() > 0, changed
    loss_clean = cross_entropy(model.inner.eval()(x), y)
    loss_adv = cross_entropy(model.inner(train_calls[0][0]), y)
    assert loss_adv > loss_clean  # the examples point uphill


def test_event_adversary_refuses_frames_without_a_count_cap():
    with pytest.raises(ConfigError, match="'event-at' with event examples needs frames of capped event counts"):
        make_defense("event-at")
    with pytest.raises(ConfigError, match="'sr-star' with event examples"):
        make_defense("sr-star", attack="events")
    with pytest.raises(ConfigError, match="event budget of adversarial training must be a whole number"):
        make_defense("event-at", count_cap=15, event_budget=0)
    with pytest.raises(ConfigError, match="adversary 'cw' is unknown"):
        make_defense("sr-star", attack="cw")
