"""ε: one parser for every stage and pipeline, one labeller, one conversion to events per frame bin."""

from __future__ import annotations

import pytest

from dvsguard.errors import ConfigError
from dvsguard.units import eps_label, eps_to_events, events_to_eps, parse_eps, parse_eps_list


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), (" 0.03 ", 0.03), (0.5, 0.5), (2, 2.0), ("1e-3", 1e-3)])
def test_parse_accepts_numbers_and_fractions(text, value) -> None:
    assert parse_eps(text) == value


@pytest.mark.parametrize("bad, cause", [
    (True, "expected a number"), ("eight", "expected a number"), ("8/0", "expected a number"),
    ("-1/255", "must be > 0"), (0, "must be > 0"), ("nan", "expected a number"), (float("nan"), "finite"), (float("inf"), "finite"), (None, "expected a number"),
])
def test_parse_rejects_with_the_place_named(bad, cause) -> None:
    with pytest.raises(ConfigError) as info:
        parse_eps(bad, "[attack] key 'eps'")
    assert str(info.value).startswith("[attack] key 'eps': ") and cause in str(info.value)


def test_lists_from_text_or_sequences_and_zero_only_when_allowed() -> None:
    assert parse_eps_list("8/255, 4/255,0.1") == (8 / 255, 4 / 255, 0.1)
    assert parse_eps_list(["8/255", 0.1]) == (8 / 255, 0.1)
    assert parse_eps_list("0,2/255", allow_zero=True) == (0.0, 2 / 255)
    with pytest.raises(ConfigError, match="must be > 0"):
        parse_eps_list("0,2/255")
    with pytest.raises(ConfigError, match="no ε given"):
        parse_eps_list(" , ")


def test_label_round_trips_whole_255ths() -> None:
    assert [eps_label(v) for v in (8 / 255, 0.031, 0.0, 1.0)] == ["8/255", "0.031", "0", "255/255"]
    for k in range(1, 64):
        assert parse_eps(eps_label(k / 255)) == k / 255


def test_events_per_frame_bin() -> None:
    # frames are count / count_cap: 8/255 at a cap of 15 is 120/255 of one event per pixel, polarity and bin
    assert eps_to_events(8 / 255, 15) == pytest.approx(120 / 255)
    assert events_to_eps(eps_to_events(0.03, 15), 15) == pytest.approx(0.03)
    assert eps_to_events(1 / 15, 15) == pytest.approx(1.0)


def test_protocol_conversion_of_cifar10dvs_at_48() -> None:
    from dvsguard.units import convert_budget, events_per_sensor_pixel, paper_units_per_events_unit

    k = paper_units_per_events_unit(15, (128, 128), (48, 48))
    assert k == pytest.approx(15 * 48 * 48 / 128**2)
    # ε = 8/255 under events is 16.9/255 in the authors' unit; under paper it is 0.031 events per sensor pixel
    assert convert_budget(8 / 255, "eps", k, "paper") * 255 == pytest.approx(16.875)
    assert events_per_sensor_pixel(8 / 255, "paper", None, (128, 128), (48, 48)) == pytest.approx(0.0314, abs=1e-4)
    assert events_per_sensor_pixel(8 / 255, "events", 15, (128, 128), (48, 48)) == pytest.approx(2.109375 * 8 / 255)
    for what in ("eps", "h", "lam"):
        there = convert_budget(0.002, what, k, "events")
        assert convert_budget(there, what, k, "paper") == pytest.approx(0.002)
    assert convert_budget(0.002, "lam", k, "events") == pytest.approx(0.002 / k**2)
    assert convert_budget(0.002, "lam", k, "events", sr_form="abs") == pytest.approx(0.002 / k)
    with pytest.raises(ConfigError, match="expected eps, h or lam"):
        convert_budget(1.0, "alpha", k, "paper")


def test_converted_lambda_weighs_the_same_sr_term() -> None:
    """A model on paper units g(v) seen in events units f(u) = g(k·u): λ converted gives the same λ‖∇f_y‖₁²."""
    import torch

    from dvsguard.units import convert_budget

    k = 2.109375
    w = torch.randn(50, generator=torch.Generator().manual_seed(0))

    def g(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(v @ w)

    v = torch.rand(50, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    (grad_p,) = torch.autograd.grad(g(v), v)
    u = (v.detach() / k).requires_grad_(True)
    (grad_e,) = torch.autograd.grad(g(k * u), u)
    lam_p = 0.002
    lam_e = convert_budget(lam_p, "lam", k, "events")
    assert float(lam_e * grad_e.abs().sum() ** 2) == pytest.approx(float(lam_p * grad_p.abs().sum() ** 2), rel=1e-5)


def test_budget_note_states_events_and_the_other_unit() -> None:
    from dvsguard.units import budget_note

    note = budget_note("ε", 8 / 255, "events", 15, (128, 128), (48, 48))
    assert note.startswith("ε = 8/255 (events protocol)")
    assert "0.471 events per frame pixel" in note and "0.0662 events per sensor pixel" in note
    assert "16.9/255 in paper units" in note
    paper = budget_note("ε", 8 / 255, "paper", None, (128, 128), (48, 48))
    assert "0.0314 events per sensor pixel" in paper and "3.79/255 in events units" in paper
    assert "sensor pixel" not in budget_note("ε", 8 / 255, "events", 15, None, (48, 48))
