"""Verification plumbing that needs no Lava: the predictor's conversions, the comparison of
recordings, the time estimate, and the error when no Lava environment exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dvsguard.errors import ExportError
from dvsguard.export import lava_env, verify
from dvsguard.export.intsim import load_netx, simulate, stream
from dvsguard.export.netx import write_netx
from dvsguard.export.quantize import quantize_model
from dvsguard.snn import SpikingVGG, VGGConfig

from .conftest import CAP, T, random_counts, tiny_model, to_model_input


@pytest.fixture
def tiny_net(tmp_path: Path) -> Path:
    return write_netx(quantize_model(tiny_model(seed=5), (2, 16, 16), CAP, T), tmp_path / "tiny.net")


def fake_lava(netfile: Path, frames: np.ndarray, **kw: object) -> dict:
    """What Lava records, produced by the simulator's literal timeline."""
    net = load_netx(netfile)
    st = stream(net, frames, frames.shape[1])
    return {"v_out": st["v_out"], "spikes": st["spikes"], "steps": st["steps"], "seconds": 0.0, "wall_seconds": 0.0}


def test_predictor_turns_frames_into_counts_and_voltages_into_logits(tiny_net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "require_lava_python", lambda build=False: Path("/usr/bin/true"))
    seen = {}

    def run(netfile: Path, frames: np.ndarray, **kw: object) -> dict:
        seen["frames"] = frames
        return fake_lava(netfile, frames)

    monkeypatch.setattr(verify, "run_lava", run)
    counts = random_counts(5, seed=11)
    predictor = verify.LavaPredictor(tiny_net)
    logits = predictor.logits(to_model_input(counts).numpy())
    np.testing.assert_array_equal(seen["frames"], counts)
    sim = simulate(load_netx(tiny_net), counts, record=True)
    np.testing.assert_allclose(logits, sim.v_out / predictor.output_scale)
    expected_spikes = sum(s.reshape(5, -1).sum(1) for s in sim.spikes)
    np.testing.assert_array_equal(predictor.last_spikes, expected_spikes)
    assert predictor.last_spikes.min() > 0


def test_comparison_finds_a_single_flipped_spike(tiny_net: Path) -> None:
    net = load_netx(tiny_net)
    counts = random_counts(2, seed=12)
    lava = fake_lava(tiny_net, counts)
    assert verify.compare_lava(net, counts, lava)["identical"]
    lava["spikes"][1][T + 3, 0, 2, 2] ^= True  # layer 1, sample 1, frame 1
    report = verify.compare_lava(net, counts, lava)
    assert not report["identical"]
    assert report["layers"][1]["spike_mismatches"] == 1 and report["layers"][1]["timeline_mismatches"] == 1
    assert report["layers"][0]["spike_mismatches"] == 0


def test_estimate_grows_with_samples_and_model_size(tmp_path: Path, tiny_net: Path) -> None:
    tiny = load_netx(tiny_net)
    small = load_netx(write_netx(quantize_model(SpikingVGG(VGGConfig.preset("small")).eval(), (2, 48, 48), 15, 10), tmp_path / "s.net"))
    assert verify.LAVA_STARTUP_S < verify.estimate_lava_seconds(tiny, 1, T) < verify.estimate_lava_seconds(tiny, 10, T)
    # the small preset costs seconds per Lava step: minutes per sample
    assert verify.estimate_lava_seconds(small, 1, 10) > 60


def test_missing_lava_environment_is_a_clear_error(tmp_path: Path, tiny_net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lava_env.ENV_VAR, str(tmp_path / "nowhere"))
    monkeypatch.setattr(lava_env, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert lava_env.find_lava_python() is None
    with pytest.raises(ExportError, match=r"no Lava environment found .* bash \S+/dvsguard/export/lava_env\.sh"):
        verify.run_lava(tiny_net, random_counts(1))
