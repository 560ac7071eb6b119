"""Fixed-point fine-tuning: the checkpoint holds on-grid weights and its scales, the exporter
reproduces its integers, and the integer network equals the PyTorch model spike for spike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dvsguard.cli import main
from dvsguard.data.cache import open_cache
from dvsguard.errors import ConfigError, ExportError
from dvsguard.export.exporter import compare_export, export_checkpoint, resolve_test_split
from dvsguard.snn.checkpoint import load_checkpoint, load_model, save_checkpoint
from dvsguard.snn.fixed_point import WEIGHT_MAX, WEIGHT_MIN, FixedPointSpec, bias_range
from dvsguard.train.trainer import TrainConfig, train


def layer_integers(model: torch.nn.Module, spec: FixedPointSpec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer name → (integer weights, integer biases) of a baked model on its recorded grids
    (before the pooling fold), computed in torch independently of the exporter."""
    modules = dict(model.named_modules())
    out = {}
    for layer in spec.layers:
        w = modules[layer.name].weight.detach().double()
        b = modules[layer.bias].bias.detach().double()
        out[layer.name] = (layer.weight_grid().integers(w).long().numpy(), layer.bias_grid().integers(b).long().numpy())
    return out


def _cfg(cache: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), defense="vanilla", preset="tiny", epochs=1, batch=8, limit_train=32,
                limit_test=20, robust_limit=4, augment=False, optimizer="adam", lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _make_active(ckpt: Path, cache: Path) -> None:
    """Give a briefly trained tiny model the activity of a trained one (it barely fires after
    a few steps): BatchNorm statistics from real frames, BN shifts around 0.5, Linear biases."""
    from dvsguard.data.dataset import make_loader
    from dvsguard.snn.checkpoint import model_payload

    model, payload = load_model(ckpt)
    x, _ = next(iter(make_loader(cache, batch_size=32, shuffle=False)))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 0.1
            bn.bias.copy_(0.5 + 0.3 * torch.randn(bn.bias.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.weight.mul_(1.5)
    payload["model"] = model_payload(model)
    save_checkpoint(ckpt, payload)


@pytest.fixture(scope="module")
def trained(digits_cache, tmp_path_factory) -> Path:
    """A tiny vanilla model trained for a short epoch (the init checkpoint), made to fire."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("vanilla")
        train(_cfg(digits_cache, limit_train=16, robust_limit=0), run, device="cpu")
        _make_active(run / "last.pt", digits_cache)
    finally:
        torch.set_num_threads(threads)
    return run / "last.pt"


@pytest.fixture(scope="module")
def fine_tuned(digits_cache, trained, tmp_path_factory) -> Path:
    """``trained`` fine-tuned in fixed point for one epoch with SR* (adversarial + SR)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp("fixed")
        train(_cfg(digits_cache, defense="sr-star", lam=1e-4, lr=1e-3, init=str(trained), fixed_point=True), run,
              device="cpu")
    finally:
        torch.set_num_threads(threads)
    return run / "last.pt"


def test_checkpoint_holds_on_grid_weights_and_loads_plainly(fine_tuned):
    model, payload = load_model(fine_tuned)  # weights_only=True, a plain SpikingVGG
    spec = FixedPointSpec.from_dict(payload["fixed_point"])
    assert [layer.name for layer in spec.layers] == ["features.0", "features.4", "classifier.1", "classifier.3"]
    assert [layer.pool for layer in spec.layers] == [1, 2, 2, 1]
    assert spec.input_scale == 15 and spec.time_steps == 4
    modules = dict(model.named_modules())
    for layer in spec.layers:
        w = modules[layer.name].weight.detach().double() * layer.weight_unit
        b = modules[layer.bias].bias.detach().double() * layer.scale
        assert torch.allclose(w, 2 * torch.round(w / 2), atol=1e-3), layer.name
        assert torch.allclose(b, torch.round(b), atol=1e-3), layer.name
        assert WEIGHT_MIN <= w.min() and w.max() <= WEIGHT_MAX + 1e-3
        lo, hi = bias_range(layer.pool)
        assert lo - 1e-3 <= b.min() and b.max() <= hi + 1e-3
        if layer.theta_int is not None:  # tie-free: s·θ half a folded unit above θ_int
            assert layer.scale == pytest.approx(layer.theta_int + 0.5 / layer.pool**2, abs=1e-12)
    for name in ("features.1",):  # the BatchNorm is folded: identity statistics, bias kept
        bn = modules[name]
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    latent = payload["trainer"]["latent_state"]
    assert not torch.equal(latent["features.0.weight"], payload["model"]["state_dict"]["features.0.weight"])


def test_exporter_reproduces_the_recorded_integers(fine_tuned, tmp_path):
    result, model, payload = export_checkpoint(fine_tuned, tmp_path / "out")
    spec = FixedPointSpec.from_dict(payload["fixed_point"])
    assert result.manifest["scales_from"] == "fixed-point record"
    ints = layer_integers(model, spec)
    for q, layer in zip(result.quantized.layers, spec.layers):
        w, b = ints[layer.name]
        k = layer.pool
        assert q.scale == layer.scale
        if q.kind == "conv":
            unfolded = q.weight[:, :, ::k, ::k]
        else:
            c = model.cfg.feature_channels
            side = model.cfg.feature_size * k
            unfolded = q.weight.reshape(q.weight.shape[0], c, side, side)[:, :, ::k, ::k].reshape(w.shape) if k > 1 else q.weight
        np.testing.assert_array_equal(unfolded, w, err_msg=layer.name)
        np.testing.assert_array_equal(q.bias, k * k * b, err_msg=layer.name)
        if layer.theta_int is not None:
            assert q.vth == k * k * layer.theta_int
    assert not any(any(q.clipped.values()) for q in result.quantized.layers)


def test_integer_network_equals_pytorch_spike_for_spike(fine_tuned, tmp_path):
    result, model, payload = export_checkpoint(fine_tuned, tmp_path / "out")
    report = compare_export(model, result.net_path, resolve_test_split(payload))
    assert report["n"] == 20
    assert report["spikes_compared"] > 0 and report["spike_mismatch"] == [0, 0, 0], report
    assert report["agreement"] == 1.0 and report["departures"] == 0, report
    assert report["logit_max_abs_error"] < 1e-4, report
    # the check means something only if the layers fire
    from dvsguard.export.intsim import load_netx, simulate
    from dvsguard.export.exporter import load_samples

    counts, _, _ = load_samples(resolve_test_split(payload), 20)
    sim = simulate(load_netx(result.net_path), counts, record=True)
    for k, s in enumerate(sim.spikes[:-1]):
        assert 0.005 < s.mean() < 0.9, f"layer {k} fires at rate {s.mean():.4f}"


def test_fixed_point_run_resumes_exactly(digits_cache, trained, tmp_path, one_thread, monkeypatch):
    """Stopped after its first epoch and resumed, a fixed-point run reaches the weights of an
    uninterrupted one (the latent weights travel in the trainer state)."""
    from dvsguard.train import trainer as trainer_mod

    cfg = _cfg(digits_cache, epochs=2, limit_train=16, robust_limit=0, init=str(trained), fixed_point=True)
    train(cfg, tmp_path / "straight", device="cpu")
    original = trainer_mod.Trainer._train_epoch

    def stop_at_second(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "split", device="cpu")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    train(cfg, tmp_path / "split", device="cpu", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    for entry in (a["model"]["state_dict"], a["trainer"]["latent_state"]):
        other = b["model"]["state_dict"] if entry is a["model"]["state_dict"] else b["trainer"]["latent_state"]
        for key in entry:
            assert torch.equal(entry[key], other[key]), key


def test_settings_and_checkpoints_that_cannot_fine_tune_are_one_line_errors(digits_cache, trained, tmp_path, capsys):
    cases = [
        (["--fixed-point"], "give its checkpoint as init (--init CKPT)"),
        (["--fixed-point", "--init", str(trained), "--amp"], "runs in float32"),
        (["--fixed-point", "--init", str(trained), "--preset", "small"], "init checkpoint holds another architecture"),
        (["--init", str(tmp_path / "none.pt")], "checkpoint not found"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--cache", str(digits_cache), "--defense", "vanilla", "--out", str(tmp_path / "run"),
                  "--preset", "tiny", "--epochs", "1", *extra])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("dvsguard: error: ") and "\n" not in err, err
        assert message in err, err
        assert not (tmp_path / "run" / "last.pt").exists()


def test_export_refuses_a_checkpoint_changed_after_fixed_point_training(fine_tuned, tmp_path):
    payload = load_checkpoint(fine_tuned)
    payload["model"]["state_dict"]["features.4.weight"][0, 0, 0, 0] += 0.3 / 111.0  # off the grid
    save_checkpoint(tmp_path / "tampered.pt", payload)
    with pytest.raises(ExportError, match=r"features\.4: weights are not on the recorded fixed-point grid"):
        export_checkpoint(tmp_path / "tampered.pt", tmp_path / "out")
    payload = load_checkpoint(fine_tuned)
    payload["fixed_point"]["layers"] = payload["fixed_point"]["layers"][:-1]
    save_checkpoint(tmp_path / "short.pt", payload)
    with pytest.raises(ExportError, match=r"no scale for layer classifier\.3 \(another architecture\?\)"):
        export_checkpoint(tmp_path / "short.pt", tmp_path / "out")


def test_fine_tuning_a_fixed_point_checkpoint_keeps_its_grids(digits_cache, fine_tuned, tmp_path, one_thread):
    train(_cfg(digits_cache, limit_train=8, robust_limit=0, init=str(fine_tuned), fixed_point=True), tmp_path / "again",
          device="cpu")
    before = load_checkpoint(fine_tuned)["fixed_point"]
    after = load_checkpoint(tmp_path / "again" / "last.pt")["fixed_point"]
    assert before == after
    assert open_cache(digits_cache).count_cap == after["input_scale"]


def test_fixed_point_needs_init_in_the_config(digits_cache):
    with pytest.raises(ConfigError, match="give its checkpoint as init"):
        _cfg(digits_cache, fixed_point=True)


@pytest.mark.slow
def test_fine_tuned_digits_model_exports_with_full_agreement(large_digits_cache, tmp_path, one_thread):
    """The small preset trained on simulated digits, fine-tuned in fixed point for one epoch:
    on the 200 test samples the integer network predicts what PyTorch predicts (≥ 99%), with
    no spike of any hidden layer different."""
    base = dict(cache=str(large_digits_cache), preset="small", batch=24, augment=False, robust_limit=0, optimizer="adam")
    train(TrainConfig(defense="vanilla", epochs=6, lr=3e-3, **base), tmp_path / "vanilla", device="cpu")
    train(TrainConfig(defense="vanilla", epochs=1, lr=1e-4, init=str(tmp_path / "vanilla" / "best.pt"), fixed_point=True,
                      **base), tmp_path / "fixed", device="cpu")
    result, model, payload = export_checkpoint(tmp_path / "fixed" / "last.pt", tmp_path / "out")
    report = compare_export(model, result.net_path, resolve_test_split(payload))
    assert report["n"] == 200 and report["accuracy_float"] > 0.3, report
    assert report["agreement"] >= 0.99, report
    assert sum(report["spike_mismatch"]) == 0, report
