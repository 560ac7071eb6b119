"""Lava itself (lava-dl netx in the project's Python 3.10 environment) against the integer
simulator, spike for spike, and the ``export --verify`` command end to end.

These tests need the Lava environment (``make lava-env``; CI builds it). Without it
they are skipped with a loud reason; they never pass silently.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsguard.cli import main
from dvsguard.data.dataset import FrameDataset
from dvsguard.export.intsim import load_netx, simulate
from dvsguard.export.lava_env import candidates, find_lava_python
from dvsguard.export.netx import write_netx
from dvsguard.export.quantize import quantize_model
from dvsguard.export.verify import compare_lava, estimate_lava_seconds, run_lava_many

from .conftest import (
    CAP,
    LAVA_DL_FILES,
    T,
    handmade_frames,
    lava_dl_frames,
    make_test_cache,
    random_counts,
    save_model_checkpoint,
    tiny_model,
    write_handmade,
)

pytestmark = pytest.mark.lava


@pytest.fixture(scope="module", autouse=True)
def lava_python() -> Path:
    python = find_lava_python()
    if python is None:
        reason = (
            "LAVA TESTS SKIPPED: no Lava environment found in "
            + ", ".join(str(p) for p in candidates())
            + " — build it with `make lava-env`"
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    return python


def test_handmade_and_exported_nets_run_identically_in_lava(tmp_path: Path) -> None:
    """Three files in one Lava process: hand-made leaky and IF netx files (odd weights,
    graded input, stride 2, rectangular maps, excitatory-only dense weights) and an
    exported tiny VGG. Every spike of every layer at every Lava step, and every read-out
    voltage, must equal the integer simulator's."""
    leaky = write_handmade(tmp_path / "leaky.net", seed=1, leaky=True)
    plain = write_handmade(tmp_path / "plain.net", seed=2, leaky=False)
    model = tiny_model(seed=7)
    exported = write_netx(quantize_model(model, (2, 16, 16), CAP, T), tmp_path / "tiny.net")
    jobs = [(leaky, handmade_frames(3, seed=1)), (plain, handmade_frames(2, seed=2)), (exported, random_counts(3, seed=3))]
    results = run_lava_many(jobs, timeout=600)
    for (path, frames), lava in zip(jobs, results):
        net = load_netx(path)
        report = compare_lava(net, frames, lava)
        assert report["identical"], (path.name, report)
        n, t = frames.shape[:2]
        assert lava["steps"] == n * t + len(net.layers)
        sim = simulate(net, frames)
        np.testing.assert_array_equal(lava["v_out"], sim.v_out)
        assert sum(r["spikes_lava"] for r in report["layers"]) > 0, f"{path.name}: no activity, the check would be empty"
    tiny_report = compare_lava(load_netx(exported), jobs[2][1], results[2])
    assert all(r["spikes_lava"] > 0 for r in tiny_report["layers"][:3]), tiny_report


def test_export_verify_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="dvsguard.stages.export")
    cache = make_test_cache(tmp_path / "cache", n=6)
    model = tiny_model(seed=2)
    ckpt = save_model_checkpoint(tmp_path / "run" / "best.pt", model, cache)
    try:
        main(["export", str(ckpt), "--out", str(tmp_path / "exp"), "--verify", "3", "--compare", "--json", "--timeout", "600"])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    v = result["verify"]
    assert v["identical"] and v["n"] == 3 and v["v_out_mismatches"] == 0
    assert all(r["spike_mismatches"] == 0 and r["timeline_mismatches"] == 0 for r in v["layers"])
    net = load_netx(result["net"])
    assert v["estimated_seconds"] == pytest.approx(estimate_lava_seconds(net, 3, T)) and v["lava_steps"] == 3 * T + 4
    # Lava computes what the integer simulator computes, so it agrees with PyTorch exactly
    # as often as the simulator does on these samples (the first 3 of the test split)
    ds = FrameDataset(cache)
    counts = np.stack([np.asarray(ds.counts(i)) for i in range(3)]).astype(np.int64)
    x = torch.stack([ds[i][0] for i in range(3)], dim=1)
    ds.close()
    with torch.no_grad():
        pred_torch = model.eval()(x).argmax(1).numpy()
    expected = float((simulate(net, counts).v_out.argmax(1) == pred_torch).mean())
    assert v["agreement_torch"] == pytest.approx(expected)
    assert "Lava: running 3 test sample(s)" in caplog.text and "estimated" in caplog.text


@pytest.mark.slow  # PilotNet takes 4–6 s per Lava step on two cores: about 5 minutes
def test_lava_dl_files_run_identically_in_lava(lava_dl_netx: Path) -> None:
    """lava-dl's own PilotNet SNN (input neuron, LOIHI neurons) and MNIST network (CUBA, no
    input layer), random inputs of several samples at lava-dl's PilotNet sample length (16
    steps), in one Lava process: every spike of every layer at every Lava step — the output
    layer's among them — and every read-out voltage equal the integer simulator's."""
    n_samples = {"pilotnet_snn.net": 3, "mnist.net": 4}
    t = 16
    nets = {name: load_netx(lava_dl_netx / name) for name in LAVA_DL_FILES}
    jobs = [(lava_dl_netx / name, lava_dl_frames(name, nets[name].input_shape, n_samples[name], t, seed=3)) for name in LAVA_DL_FILES]
    results = run_lava_many(jobs, timeout=3600)
    for (path, frames), lava in zip(jobs, results):
        net = nets[path.name]
        report = compare_lava(net, frames, lava)
        compared = sum(rec.size for rec in lava["spikes"])
        agreeing = compared - sum(r["timeline_mismatches"] for r in report["layers"])
        emitted = [r["spikes_lava"] for r in report["layers"]]
        v_sim = simulate(net, frames).v_out
        print(
            f"{path.name}: {agreeing}/{compared} spike slots agree over {lava['steps']} Lava steps "
            f"({sum(emitted)} spikes; per layer {emitted}); read-out voltages "
            f"{int((lava['v_out'] == v_sim).sum())}/{v_sim.size} equal; Lava {lava['seconds']:.0f} s"
        )
        assert lava["steps"] == frames.shape[0] * t + len(net.layers) - 1 + net.input_delay
        assert report["identical"], (path.name, report)
        np.testing.assert_array_equal(lava["v_out"], v_sim)
        hidden = emitted[:-1] if path.name == "pilotnet_snn.net" else emitted  # PilotNet's read-out never fires
        assert all(hidden), f"{path.name}: a silent layer would make the check empty: {emitted}"

