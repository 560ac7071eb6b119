"""The paper protocol's training pieces: SNN-RAT's sampled-row retraction, RAT's PGD adversary, PGD-AT's α."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dvsguard.errors import ConfigError
from dvsguard.train.defenses import (RAT, RAT_PAPER_ALPHA, make_defense, parseval_retraction, retract_rows,
                                     sampled_rows, snn_rat_retraction)


def _formula(w: torch.Tensor, beta: float) -> torch.Tensor:
    return (1 + beta) * w - beta * w @ w.t() @ w


def test_retract_rows_applies_the_formula_to_the_chosen_rows_only() -> None:
    w = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 1.0]])
    before = w.clone()
    retract_rows(w, 0.1, torch.tensor([0, 2]))
    sub = before[[0, 2]]  # the Gram matrix of the chosen rows alone
    torch.testing.assert_close(w[[0, 2]], _formula(sub, 0.1))
    assert torch.equal(w[[1, 3]], before[[1, 3]])
    # by hand for row 0: W_S W_Sᵀ = [[5, 2], [2, 5]]; (W_S W_Sᵀ W_S)[0] = 5·[1,2,0] + 2·[2,0,1] = [9, 10, 2]
    torch.testing.assert_close(w[0], 1.1 * torch.tensor([1.0, 2.0, 0.0]) - 0.1 * torch.tensor([9.0, 10.0, 2.0]))


def test_sampled_rows_are_30_percent_without_repeats_and_seeded() -> None:
    a = sampled_rows(4096, torch.Generator().manual_seed(7))
    b = sampled_rows(4096, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.numel() == int(4096 * 0.3) == 1228 and a.unique().numel() == 1228
    assert not torch.equal(a, sampled_rows(4096, torch.Generator().manual_seed(8)))
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(sampled_rows(4096, g), sampled_rows(4096, g))  # drawn afresh at every step


def test_snn_rat_retraction_samples_rows_of_large_linear_layers_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.Flatten(), nn.Linear(36, 250), nn.Linear(250, 199))
    for m in model:
        if hasattr(m, "weight"):
            m.weight.data.mul_(0.1)
    before = [m.weight.detach().clone() for m in (model[0], model[2], model[3])]
    snn_rat_retraction(model, 0.01, torch.Generator().manual_seed(3))
    conv, large, small = (m.weight.detach() for m in (model[0], model[2], model[3]))
    # the convolution (viewed as 4 × 18) and the Linear with 199 < 200 rows: every row
    expected_conv = before[0].clone()
    parseval_retraction(expected_conv, 0.01)
    assert torch.equal(conv, expected_conv)
    torch.testing.assert_close(conv.view(4, -1), _formula(before[0].view(4, -1), 0.01))
    torch.testing.assert_close(small, _formula(before[2], 0.01))
    # the Linear with 250 rows: the seeded 75 rows, the formula on them alone, the others untouched
    rows = sampled_rows(250, torch.Generator().manual_seed(3))
    changed = (large != before[1]).any(1)
    assert int(changed.sum()) == 75 and bool(changed[rows].all())
    torch.testing.assert_close(large[rows], _formula(before[1][rows], 0.01))


def test_paper_rat_trains_against_pgd_with_a_random_start_and_retracts_sampled_rows() -> None:
    rows = torch.Generator().manual_seed(1)
    rat = make_defense("rat", rat="paper", generator=torch.Generator(), row_generator=rows, value_range=(0.0, 1.0))
    assert isinstance(rat, RAT) and rat.form == "paper" and not rat.weight_decay_allowed
    spec = rat.adversary.spec
    assert (spec.kind, spec.eps, spec.steps, spec.step_size, spec.random_start) == ("pgd", 2 / 255, 5, RAT_PAPER_ALPHA, True)
    assert make_defense("rat", rat="paper", pgd_alpha=0.5 / 255, row_generator=rows).adversary.spec.step_size == 0.5 / 255
    events = make_defense("rat")
    assert events.form == "fgsm" and events.adversary.spec.kind == "fgsm"
    with pytest.raises(ConfigError, match="needs a row generator"):
        make_defense("rat", rat="paper")
    with pytest.raises(ConfigError, match="RAT form 'pgd' is unknown"):
        make_defense("rat", rat="pgd")


def test_pgd_at_alpha_defaults_to_the_protocol_step_and_pgd_alpha_overrides_it() -> None:
    assert make_defense("pgd-at", pgd_at_alpha=0.01).adversary.spec.step_size == 0.01
    assert make_defense("pgd-at", pgd_at_alpha=0.01, pgd_alpha=0.002).adversary.spec.step_size == 0.002
    assert make_defense("pgd-at").adversary.spec.step_size == pytest.approx(2.5 * (2 / 255) / 5)
    # only PGD-AT takes the protocol's step; SR*'s PGD keeps the 2.5·ε/k default
    sr = make_defense("sr-star", attack="pgd", pgd_at_alpha=0.01)
    assert sr.adversary.spec.step_size == pytest.approx(2.5 * (2 / 255) / 5)
