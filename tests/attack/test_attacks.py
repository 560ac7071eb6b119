"""Attack contracts: ε-ball and range, FGSM = one PGD step, modes restored, per-sample noise."""

from __future__ import annotations

import pytest
import torch

from dvsguard.attack import FGSM, PGD, REGISTRY, fgsm, make_attack, pgd
from dvsguard.attack.apgd import checkpoints, halve_step
from dvsguard.attack.ensemble import Ensemble
from dvsguard.errors import AttackError

EPS = 8 / 255


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_attack_stays_in_ball_and_range(name, tiny, batch) -> None:
    x, y = batch
    attack = make_attack(name, EPS, **({"steps": 5} if "apgd" in name or name.startswith("pgd") else {}))
    x_adv = attack(tiny, x, y)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if name != "random":
        assert not torch.equal(x_adv, x)  # it did move


@pytest.mark.parametrize("name", ["fgsm", "pgd10", "apgd10", "rfgsm", "random"])
def test_attack_respects_a_custom_range_at_the_edges(name, tiny) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 3, (3, 4, 2, 8, 8), generator=g).float() * 0.5  # 0, 0.5, 1: edges of the range
    y = torch.tensor([0, 1, 2, 3])
    x_adv = make_attack(name, 0.2, value_range=(0.0, 1.0))(tiny, x, y)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_pgd_one_step_without_start_is_fgsm(tiny, batch) -> None:
    x, y = batch
    a = pgd(tiny, x, y, EPS, alpha=EPS, steps=1, random_start=False)
    b = fgsm(tiny, x, y, EPS)
    assert torch.equal(a, b)
    c = make_attack("pgd1", EPS, alpha=EPS, random_start=False)(tiny, x, y)
    assert torch.equal(c, b)


def test_fgsm_moves_every_pixel_by_eps_where_the_range_allows(tiny, batch) -> None:
    x, y = batch
    x = x.clamp(0.1, 0.9)
    x_adv = fgsm(tiny, x, y, 0.05)
    moved = (x_adv - x).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 0.05), atol=1e-6)


def test_model_mode_restored(tiny, batch) -> None:
    x, y = batch
    tiny.train()
    tiny.bn.eval()  # a mixed state must come back as it was
    seen = []
    hook = tiny.conv.register_forward_hook(lambda m, i, o: seen.append(tiny.bn.training or tiny.training))
    make_attack("pgd10", EPS)(tiny, x, y)
    hook.remove()
    assert seen and not any(seen)  # eval mode during the attack
    assert tiny.training and not tiny.bn.training


def test_model_mode_restored_after_an_exception(tiny, batch) -> None:
    x, y = batch
    tiny.train()

    def boom(logits, y):
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        make_attack("pgd10", EPS, loss_fn=boom)(tiny, x, y)
    assert tiny.training and tiny.bn.training


def test_random_starts_are_per_sample(tiny, batch) -> None:
    """A sample's result does not depend on the other samples in its batch."""
    x, y = batch
    ids = torch.arange(10, 16)
    for name in ["pgd10", "apgd10", "rfgsm", "random"]:
        attack = make_attack(name, EPS, seed=7)
        full = attack(tiny, x, y, sample_ids=ids)
        part = attack(tiny, x[:, 2:5], y[2:5], sample_ids=ids[2:5])
        assert torch.allclose(full[:, 2:5], part, atol=1e-6), name
        other_seed = make_attack(name, EPS, seed=8)(tiny, x, y, sample_ids=ids)
        assert not torch.equal(other_seed, full), name


def test_pgd_generator_draws_the_batch(tiny, batch) -> None:
    x, y = batch
    a = pgd(tiny, x, y, EPS, steps=2, generator=torch.Generator().manual_seed(0))
    b = pgd(tiny, x, y, EPS, steps=2, generator=torch.Generator().manual_seed(0))
    c = pgd(tiny, x, y, EPS, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_function_and_class_draw_the_same_random_start(tiny, batch) -> None:
    """Same seed, same start: with α = 0 the attack returns its (projected) random start."""
    x, y = batch
    ids = [7, 3, 11, 0, 5, 2]
    start = pgd(tiny, x, y, EPS, alpha=0.0, steps=1, seed=5, sample_ids=ids)
    assert not torch.equal(start, x)
    assert torch.equal(start, PGD(EPS, steps=1, alpha=0.0, seed=5)(tiny, x, y, sample_ids=ids))
    assert torch.equal(start, make_attack("pgd1", EPS, alpha=0.0, seed=5)(tiny, x, y, sample_ids=ids))
    assert not torch.equal(start, pgd(tiny, x, y, EPS, alpha=0.0, steps=1, seed=6, sample_ids=ids))
    from_gen = pgd(tiny, x, y, EPS, alpha=0.0, steps=1, generator=torch.Generator().manual_seed(2))
    by_class = PGD(EPS, steps=1, alpha=0.0, generator=torch.Generator().manual_seed(2))(tiny, x, y)
    assert torch.equal(from_gen, by_class)
    # the full attack too, and FGSM (no randomness) both ways
    assert torch.equal(pgd(tiny, x, y, EPS, steps=3, seed=5), PGD(EPS, steps=3, seed=5)(tiny, x, y))
    assert torch.equal(fgsm(tiny, x, y, EPS), FGSM(EPS)(tiny, x, y))


def test_bad_inputs_are_attack_errors(tiny, batch) -> None:
    x, y = batch
    with pytest.raises(AttackError, match="labels"):
        make_attack("fgsm", EPS)(tiny, x, y[:3])
    with pytest.raises(AttackError, match="eps"):
        make_attack("fgsm", -1.0)
    with pytest.raises(AttackError, match="unknown attack"):
        make_attack("cw", EPS)
    assert make_attack("PGD7", EPS).steps == 7
    assert make_attack("apgd", EPS).steps == 100


@pytest.mark.parametrize("name", ["fgsm", "pgd2", "apgd2", "rfgsm"])
def test_frames_the_model_rejects_are_attack_errors(name, batch) -> None:
    from dvsguard.snn.vgg import SpikingVGG, VGGConfig

    x, y = batch  # 8×8 frames; the tiny SpikingVGG takes 16×16
    model = SpikingVGG(VGGConfig.preset("tiny", num_classes=4)).eval()
    expected = r"SpikingVGG rejected .*\[T, B, 2, 16, 16\].*\(3, 6, 2, 8, 8\)"
    with pytest.raises(AttackError, match=expected):
        make_attack(name, EPS)(model, x, y)
    with pytest.raises(AttackError, match=expected):
        Ensemble(make_attack(name, EPS), modes=["triangle:1"]).run(model, x, y)


def test_apgd_checkpoints_follow_the_schedule() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert checkpoints(50) == [11, 21, 30, 38, 45]


def test_apgd_halving_rule_on_hand_made_losses() -> None:
    # Four samples, a window of k = 4 steps (5 losses: the one before the window, then the window's).
    window = torch.tensor([[1.0, 1.0, 1.0, 1.0],
                           [2.0, 0.5, 2.0, 2.0],
                           [3.0, 0.6, 1.0, 3.0],
                           [4.0, 0.4, 2.0, 4.0],
                           [5.0, 0.3, 3.0, 5.0]])
    # rises per sample: 4, 1, 3, 4; condition 1 (rises <= 0.75·4 = 3) holds for samples 1 and 2 only.
    halved_before = torch.tensor([False, False, False, True])
    best_before = torch.tensor([5.0, 0.0, 0.0, 9.0])
    best = torch.tensor([5.0, 1.0, 3.0, 5.0])
    # Sample 0: loss always rose, but the best loss did not improve and η was not halved last time
    # (condition 2). Sample 3: no improvement either, but η was halved at the previous checkpoint.
    assert halve_step(window, 0.75, halved_before, best_before, best).tolist() == [True, True, True, False]
    # Right after a halving, a stalled best loss alone does not halve η again.
    assert not halve_step(window, 0.75, torch.ones(4, dtype=torch.bool), best, best)[[0, 3]].any()
    # Exactly ρ·k rises count as too few (the reference's <=); with ρ = 0.5 the same three rises are enough.
    three = torch.tensor([[0.0], [1.0], [2.0], [3.0], [2.0]])
    assert halve_step(three, 0.75, torch.ones(1, dtype=torch.bool), torch.zeros(1), torch.ones(1)).item()
    assert not halve_step(three, 0.5, torch.ones(1, dtype=torch.bool), torch.zeros(1), torch.ones(1)).item()
    with pytest.raises(AttackError, match="k >= 1"):
        halve_step(torch.zeros(1, 4), 0.75, halved_before, best_before, best)


def test_apgd_restarts_only_improve(tiny, batch) -> None:
    x, y = batch
    loss = torch.nn.functional.cross_entropy
    one = make_attack("apgd10", EPS, restarts=1)(tiny, x, y)
    three = make_attack("apgd10", EPS, restarts=3)(tiny, x, y)
    with torch.no_grad():
        l1 = loss(tiny(one), y, reduction="none")
        l3 = loss(tiny(three), y, reduction="none")
        fooled3 = tiny(three).argmax(1) != y
    assert torch.all((l3 >= l1 - 1e-5) | fooled3)


def test_apgd_first_step_is_a_doubled_fgsm_step_and_keeps_the_better_point(tiny, batch) -> None:
    x, y = batch
    x = x.clamp(0.2, 0.8)
    apgd = make_attack("apgd1", EPS, random_start=False)(tiny, x, y)
    step = fgsm(tiny, x, y, EPS)  # P(x + 2ε·sign g) = P(x + ε·sign g) inside the ε-ball
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        l_x, l_step = loss(tiny(x), y, reduction="none"), loss(tiny(step), y, reduction="none")
        fooled = tiny(step).argmax(1) != y
        wrong = tiny(x).argmax(1) != y  # already misclassified: the start is kept
    take_step = ((l_step > l_x) | fooled) & ~wrong
    assert take_step.any()
    assert torch.equal(apgd[:, take_step], step[:, take_step])
    assert torch.equal(apgd[:, ~take_step], x[:, ~take_step])
