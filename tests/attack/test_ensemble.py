"""Ensemble attack: early exit equals exhaustive, gradient modes restored, black box uses the source only."""

from __future__ import annotations

import pytest
import torch

from dvsguard.attack import make_attack
from dvsguard.attack.base import predict
from dvsguard.attack.ensemble import Ensemble, gamma_grid, paper_modes
from dvsguard.snn.neuron import gradient_modes
from dvsguard.snn.surrogate import PAPER_ENSEMBLE, TRIANGLE, GradientMode


def test_paper_members_and_gamma_grid() -> None:
    assert paper_modes() == PAPER_ENSEMBLE
    grid = gamma_grid()
    assert len(grid) == 30 and grid[0] == GradientMode("triangle", 0.1) and grid[-1] == GradientMode("triangle", 3.0)


@pytest.mark.parametrize("name,eps", [("pgd3", 16 / 255), ("fgsm", 24 / 255), ("apgd3", 16 / 255)])
def test_early_exit_equals_exhaustive(name, eps, trained_snn, test_patterns) -> None:
    x, y = test_patterns
    x, y = x[:, :20], y[:20]
    ids = torch.arange(100, 100 + x.shape[1])
    attack = make_attack(name, eps, seed=3)
    fast = Ensemble(attack, early_exit=True).run(trained_snn, x, y, ids)
    full = Ensemble(attack, early_exit=False).run(trained_snn, x, y, ids)
    assert torch.equal(fast.fooled, full.fooled)
    assert torch.equal(fast.member, full.member)
    assert torch.equal(fast.x_adv, full.x_adv)
    # the members do not all agree, and later members saw fewer samples
    assert fast.fooled.any() and not fast.fooled.all()
    assert full.attacked == [x.shape[1]] * 4
    assert fast.attacked[0] == int((predict(trained_snn, x) == y).sum())
    assert fast.attacked[-1] < fast.attacked[0]
    # success means the target is fooled by the returned example
    assert torch.equal(predict(trained_snn, fast.x_adv) != y, fast.fooled)


def test_ensemble_is_at_least_as_strong_as_each_member(trained_snn, test_patterns) -> None:
    x, y = test_patterns
    attack = make_attack("fgsm", 16 / 255)
    fooled = Ensemble(attack).run(trained_snn, x, y).fooled
    for mode in PAPER_ENSEMBLE:
        single = predict(trained_snn, attack.with_mode(mode)(trained_snn, x, y)) != y
        assert torch.all(fooled | ~single)


def test_gradient_mode_set_during_attack_and_restored(trained_snn, test_patterns) -> None:
    x, y = test_patterns
    before = gradient_modes(trained_snn)
    seen: list[set] = []

    def loss(logits, target):
        seen.append(set(gradient_modes(trained_snn).values()))
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    make_attack("fgsm", 8 / 255, grad_mode="atan:2", loss_fn=loss)(trained_snn, x[:, :4], y[:4])
    assert seen == [{GradientMode("atan", 2.0)}]
    assert gradient_modes(trained_snn) == before


def test_gradient_mode_restored_after_an_exception(trained_snn, test_patterns) -> None:
    x, y = test_patterns
    before = gradient_modes(trained_snn)
    assert set(before.values()) == {TRIANGLE}

    def boom(logits, target):
        raise RuntimeError("boom")

    for mode in ["rga", "sigmoid:4"]:
        with pytest.raises(RuntimeError, match="boom"):
            make_attack("pgd10", 8 / 255, grad_mode=mode, loss_fn=boom)(trained_snn, x[:, :4], y[:4])
        assert gradient_modes(trained_snn) == before
        assert not trained_snn.training
    with pytest.raises(RuntimeError, match="boom"):
        Ensemble(make_attack("apgd10", 8 / 255, loss_fn=boom)).run(trained_snn, x[:, :4], y[:4])
    assert gradient_modes(trained_snn) == before


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd"])
def test_black_box_with_zero_gradient_source_leaves_the_target_untouched(name, trained_snn, test_patterns, zero_grad_net) -> None:
    x, y = test_patterns
    source = zero_grad_net
    attack = make_attack(name, 16 / 255, steps=3, random_start=False) if name != "fgsm" else make_attack(name, 16 / 255)
    result = Ensemble(attack).run(source, x, y, target=trained_snn)
    assert torch.equal(result.x_adv, x)
    assert torch.equal(result.fooled, predict(trained_snn, x) != y)
    # whereas the same attack crafted on the target itself does move the inputs
    assert not torch.equal(Ensemble(attack).run(trained_snn, x, y).x_adv, x)


def test_black_box_uses_the_source_gradients(trained_snn, test_patterns, zero_grad_net) -> None:
    x, y = test_patterns
    fgsm = make_attack("fgsm", 16 / 255)
    expected = fgsm.with_mode(TRIANGLE)(trained_snn, x, y)
    target = zero_grad_net  # predicts class 3 everywhere
    result = Ensemble(fgsm, modes=[TRIANGLE]).run(trained_snn, x, y, target=target)
    robust = y == 3
    assert torch.equal(result.x_adv[:, robust], expected[:, robust])
