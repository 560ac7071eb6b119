"""``dvsguard predict`` on a folder mixing good, real, empty and garbage recordings."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsguard.data.frames import FramingConfig
from dvsguard.data.synth import SynthConfig, make_digits
from dvsguard.snn.checkpoint import model_payload, save_checkpoint
from dvsguard.snn.vgg import SpikingVGG, VGGConfig

SIZE = 16


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("predict")
    digits = tmp / "digits"
    make_digits(digits, SynthConfig(per_class=2, size=SIZE, seed=3))
    torch.manual_seed(0)
    model = SpikingVGG(VGGConfig.preset("tiny", input_size=SIZE))
    framing = FramingConfig(n_frames=4, height=SIZE, width=SIZE)
    classes = sorted(p.name for p in digits.iterdir() if p.is_dir())
    ckpt = save_checkpoint(tmp / "model.pt", {
        "model": model_payload(model),
        "data": {"framing": framing.to_dict(), "classes": classes, "value_range": [0.0, 1.0]},
    })
    return digits, ckpt


def run_predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvsguard", "predict", *args, "--json"],
                          capture_output=True, text=True, timeout=300)


def test_mixed_folder_rows_and_exit_code(folder_and_model, tmp_path: Path, recordings_dir: Path) -> None:
    digits, ckpt = folder_and_model
    mixed = tmp_path / "mixed"
    shutil.copytree(digits / "digit1", mixed / "digit1")
    for real in recordings_dir.iterdir():
        if real.suffix in (".aedat4", ".raw"):
            shutil.copy(real, mixed / real.name)
    (mixed / "empty.npz").write_bytes(b"")
    (mixed / "garbage.aedat4").write_bytes(bytes(range(256)) * 8)
    out = tmp_path / "rows.csv"
    proc = run_predict(str(mixed), "--model", str(ckpt), "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out))}
    good = [p.name for p in (mixed / "digit1").iterdir()] + ["davis346.aedat4", "evt2.raw"]
    assert set(rows) == set(good) | {"empty.npz", "garbage.aedat4"}
    assert result["n_files"] == len(rows) and result["n_failed"] == 2
    for name in good:
        row = rows[name]
        assert row["error"] == "" and row["class_name"] and 0.0 < float(row["confidence"]) <= 1.0
        assert int(row["events"]) > 0 and int(row["spikes"]) >= 0
    assert int(rows["davis346.aedat4"]["events"]) == 78830
    for bad in ("empty.npz", "garbage.aedat4"):
        assert rows[bad]["predicted"] == "" and bad in rows[bad]["error"]
        assert "\n" not in rows[bad]["error"]


def test_labels_accuracy_and_attack_jsonl(folder_and_model, tmp_path: Path) -> None:
    digits, ckpt = folder_and_model
    out = tmp_path / "rows.jsonl"
    proc = run_predict(str(digits), "--model", str(ckpt), "--out", str(out), "--labels", "folders",
                       "--attack", "fgsm", "--eps", "8/255", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and all(r["error"] is None for r in rows)
    assert result["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 20)
    assert result["robust_accuracy"] == pytest.approx(sum(r["robust_correct"] for r in rows) / 20)
    assert all(r["label"] == int(Path(r["path"]).parent.name[-1]) for r in rows)


def test_output_inside_a_class_folder_skips_only_the_output_file(folder_and_model, tmp_path: Path) -> None:
    digits, ckpt = folder_and_model
    folder = tmp_path / "digits"
    shutil.copytree(digits, folder)
    out = folder / "digit0" / "preds.csv"
    proc = run_predict(str(folder), "--model", str(ckpt), "--out", str(out), "--labels", "folders", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader(open(out)))
    assert result["n_files"] == len(rows) == 20
    assert sum(Path(r["path"]).parent.name == "digit0" for r in rows) == 2
    assert all(Path(r["path"]).name != "preds.csv" for r in rows)


def test_bad_arguments(folder_and_model, tmp_path: Path) -> None:
    digits, ckpt = folder_and_model
    proc = run_predict(str(digits), "--model", str(ckpt), "--out", str(tmp_path / "x.txt"))
    assert proc.returncode == 1 and "must end in .csv or .jsonl" in proc.stderr
    proc = run_predict(str(digits), "--model", str(ckpt), "--attack", "fgsm", "--out", str(tmp_path / "x.csv"))
    assert proc.returncode == 1 and "--attack needs --labels" in proc.stderr
    garbage = tmp_path / "bad.pt"
    garbage.write_bytes(b"not a checkpoint")
    proc = run_predict(str(digits), "--model", str(garbage), "--out", str(tmp_path / "x.csv"))
    assert proc.returncode == 1 and str(garbage) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.lava
def test_netx_prediction_in_lava_matches_pytorch(folder_and_model, tmp_path: Path) -> None:
    """``predict --netx`` runs the exported network in Lava's simulator (about a minute)."""
    import warnings

    from dvsguard.export.exporter import export_checkpoint
    from dvsguard.export.lava_env import find_lava_python

    if find_lava_python() is None:
        reason = "LAVA ENVIRONMENT MISSING: build it with `make lava-env`; predict --netx not checked"
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    digits, _ = folder_and_model
    torch.manual_seed(1)
    model = SpikingVGG(VGGConfig.preset("tiny", input_size=SIZE))
    with torch.no_grad():  # a BatchNorm shift that makes every layer spike on sparse frames
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.fill_(0.5)
    classes = sorted(p.name for p in digits.iterdir() if p.is_dir())
    ckpt = save_checkpoint(tmp_path / "spiking.pt", {
        "model": model_payload(model),
        "data": {"framing": FramingConfig(n_frames=4, height=SIZE, width=SIZE).to_dict(), "classes": classes,
                 "value_range": [0.0, 1.0]},
    })
    two = tmp_path / "two"
    (two / "digit3").mkdir(parents=True)
    for f in sorted((digits / "digit3").iterdir())[:2]:
        shutil.copy(f, two / "digit3" / f.name)
    result, _, _ = export_checkpoint(ckpt, tmp_path / "export", name="tiny")
    torch_rows, lava_rows = tmp_path / "torch.csv", tmp_path / "lava.csv"
    assert run_predict(str(two), "--model", str(ckpt), "--out", str(torch_rows)).returncode == 0
    proc = run_predict(str(two), "--model", str(ckpt), "--out", str(lava_rows), "--netx", str(result.net_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["backend"] == "lava"
    by_torch = {r["path"]: r for r in csv.DictReader(open(torch_rows))}
    by_lava = {r["path"]: r for r in csv.DictReader(open(lava_rows))}
    assert by_torch.keys() == by_lava.keys() and len(by_lava) == 2
    # Lava's read-out equals the bit-exact integer simulator's on the same frames
    from dvsguard.data.events import read_events
    from dvsguard.data.frames import events_to_frames
    from dvsguard.export.intsim import load_netx, simulate

    framing = FramingConfig(n_frames=4, height=SIZE, width=SIZE)
    paths = sorted(by_lava)
    counts = np.stack([events_to_frames(read_events(p), framing) for p in paths]).astype(np.int64)
    sim = simulate(load_netx(result.net_path), counts, record=True)
    for k, path in enumerate(paths):
        assert int(by_lava[path]["predicted"]) == int(np.argmax(sim.v_out[k]))
        assert int(by_lava[path]["spikes"]) == sum(int(layer[k].sum()) for layer in sim.spikes) > 0
        assert int(by_torch[path]["spikes"]) > 0
