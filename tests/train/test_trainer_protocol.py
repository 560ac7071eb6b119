"""The protocol in training: inherited from the cache, recorded in checkpoints, and what it selects."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from dvsguard.errors import CheckpointError, ConfigError
from dvsguard.protocol import get as get_protocol
from dvsguard.snn.checkpoint import checkpoint_protocol, load_checkpoint, load_model, save_checkpoint
from dvsguard.train import trainer as trainer_mod
from dvsguard.train.trainer import TrainConfig, attack_range, train


def _cfg(cache, **kw) -> TrainConfig:
    base = dict(cache=str(cache), defense="vanilla", preset="tiny", epochs=1, batch=8, limit_train=16,
                limit_test=8, robust_limit=4, augment=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def paper_cache(monkeypatch):
    """Make the trainer see its caches as built under the paper protocol."""
    monkeypatch.setattr(trainer_mod, "_cache_protocol", lambda info: "paper")


def test_events_is_inherited_and_recorded(digits_cache, tmp_path, one_thread):
    result = train(_cfg(digits_cache), tmp_path / "run", device="cpu")
    assert result["protocol"] == "events"
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["data"]["protocol"] == "events" and last["train"]["protocol"] == "events"
    assert last["model"]["config"]["linear_init"] == "kaiming"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["protocol"] == "events" and config["protocol"] == get_protocol("events").to_dict()
    # --protocol events given explicitly resumes the run started without it
    done = train(_cfg(digits_cache, protocol="events"), tmp_path / "run", resume=True, device="cpu")
    assert done["resumed_from"] == 1


def test_a_protocol_other_than_the_cache_is_refused(digits_cache, tmp_path, one_thread):
    with pytest.raises(ConfigError, match="was made under protocol 'events', not 'paper'"):
        train(_cfg(digits_cache, protocol="paper"), tmp_path / "run", device="cpu")
    with pytest.raises(ConfigError, match="unknown protocol 'cifar'"):
        _cfg(digits_cache, protocol="cifar")
    assert not (tmp_path / "run").exists()


def test_paper_run_selects_nda_torch_init_unit_clamp_and_snn_rat(digits_cache, tmp_path, one_thread, monkeypatch,
                                                                 paper_cache):
    seen: dict = {}
    real_defense, real_loader = trainer_mod.make_defense, trainer_mod.make_loader

    def defense(*a, **kw):
        seen["defense"] = kw
        return real_defense(*a, **kw)

    def loader(*a, **kw):
        if kw.get("augment"):
            seen["augmentation"] = kw["augmentation"]
        return real_loader(*a, **kw)

    monkeypatch.setattr(trainer_mod, "make_defense", defense)
    monkeypatch.setattr(trainer_mod, "make_loader", loader)
    result = train(_cfg(digits_cache, defense="rat", augment=True), tmp_path / "rat", device="cpu")
    assert result["protocol"] == "paper" and seen["augmentation"] == "nda"
    kw = seen["defense"]
    assert kw["value_range"] == (0.0, 1.0) and kw["rat"] == "paper" and kw["pgd_at_alpha"] == 0.01
    assert kw["row_generator"] is not None
    model, payload = load_model(tmp_path / "rat" / "last.pt")
    assert model.cfg.linear_init == "torch" and checkpoint_protocol(payload) == "paper"
    assert payload["train"]["protocol"] == "paper" and payload["trainer"]["optimizer"]["param_groups"][0]["weight_decay"] == 0
    assert "rat_rows" in payload["trainer"]["rng"][0]["generators"]  # the row draws resume exactly
    # an events checkpoint does not start a paper run
    train(_cfg(digits_cache), tmp_path / "events", device="cpu")
    monkeypatch.setattr(trainer_mod, "_cache_protocol", lambda info: "events")
    with pytest.raises(ConfigError, match="trained under protocol 'paper', this run is 'events'"):
        train(_cfg(digits_cache, init=str(tmp_path / "rat" / "last.pt")), tmp_path / "init", device="cpu")


def test_paper_pgd_at_takes_the_protocol_step_unless_given(digits_cache, tmp_path, one_thread, monkeypatch, paper_cache):
    seen: list = []
    real = trainer_mod.make_defense
    monkeypatch.setattr(trainer_mod, "make_defense", lambda *a, **kw: seen.append(d := real(*a, **kw)) or d)
    train(_cfg(digits_cache, defense="pgd-at", robust_limit=0, limit_test=1), tmp_path / "a", device="cpu")
    train(_cfg(digits_cache, defense="pgd-at", robust_limit=0, limit_test=1, pgd_alpha=0.004), tmp_path / "b",
          device="cpu")
    assert [d.adversary.spec.step_size for d in seen] == [0.01, 0.004]
    assert all(d.adversary.spec.value_range == (0.0, 1.0) for d in seen)


def test_attack_range_is_the_data_range_under_events_and_unit_under_paper():
    info = SimpleNamespace(value_range=(0.0, 37.5))  # a paper cache holds raw counts
    assert attack_range(get_protocol("events"), info) == (0.0, 37.5)
    assert attack_range(get_protocol("paper"), info) == (0.0, 1.0)


def test_checkpoints_without_a_protocol_are_events_and_a_bad_one_is_refused(digits_cache, tmp_path, one_thread):
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=2), run, device="cpu")
    payload = load_checkpoint(run / "last.pt")
    del payload["data"]["protocol"], payload["train"]["protocol"]  # a checkpoint from before protocols
    payload["epoch"] = 1
    save_checkpoint(run / "last.pt", payload)
    assert checkpoint_protocol(load_model(run / "last.pt")[1]) == "events"
    assert train(_cfg(digits_cache, epochs=2), run, resume=True, device="cpu")["resumed_from"] == 1
    payload = load_checkpoint(run / "best.pt")
    payload["data"]["protocol"] = "cifar"
    save_checkpoint(tmp_path / "bad.pt", payload)
    with pytest.raises(CheckpointError, match="'data.protocol' is 'cifar', expected one of events, paper"):
        load_model(tmp_path / "bad.pt")
    old = load_checkpoint(run / "best.pt")
    del old["model"]["config"]["linear_init"]  # model configs from before linear_init: kaiming
    save_checkpoint(tmp_path / "old.pt", old)
    model, _ = load_model(tmp_path / "old.pt")
    assert model.cfg.linear_init == "kaiming"
    assert torch.equal(model.classifier[1].weight, load_model(run / "best.pt")[0].classifier[1].weight)


def test_runs_from_before_the_event_adversary_resume(digits_cache, tmp_path, one_thread):
    """A last.pt whose train settings predate event_budget/step_events resumes (they were their defaults)."""
    run = tmp_path / "run"
    train(_cfg(digits_cache, epochs=2), run, device="cpu")
    payload = load_checkpoint(run / "last.pt")
    del payload["train"]["event_budget"], payload["train"]["step_events"]
    payload["epoch"] = 1
    save_checkpoint(run / "last.pt", payload)
    assert train(_cfg(digits_cache, epochs=2), run, resume=True, device="cpu")["resumed_from"] == 1
    payload = load_checkpoint(run / "last.pt")
    payload["epoch"] = 1
    save_checkpoint(run / "last.pt", payload)
    with pytest.raises(ConfigError, match="cannot resume with event_budget=8; the run was started with event_budget=32"):
        train(_cfg(digits_cache, epochs=2, event_budget=8), run, resume=True, device="cpu")
